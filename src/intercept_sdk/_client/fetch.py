"""Fetching site files: over HTTP(S) with httpx, or from a local directory / file:// URL.

The updater asks for three things: the manifest (conditionally, with an ETag), a root by
version, and an artefact streamed into a file with a hard length cap. Everything here is
bounded: connect/read/write timeouts, a total deadline per request (so a slow-drip server
cannot hold the caller), a byte cap per download, and a bounded number of retries.

Retries (tenacity, waiting as the client's one :class:`~.retry.RetryPolicy` says):
network errors, 5xx, 408 and 429 are retried with exponential backoff and full jitter,
honouring ``Retry-After``; other 4xx (401/403/404...) stop at once and
surface as :class:`HTTPStatusError`. Redirects are not followed: a site is plain files,
so a redirect (possibly to another host) is treated as an error.

TLS verification is always on for https (``ca_bundle`` replaces the system CAs with a
private CA; there is no switch to turn verification off). Files are asked for without
content coding (``Accept-Encoding: identity``), since signed lengths, hashes and Range
offsets are those of the files.

Downloads resume: a partial file is kept across network failures and completed with
``Range``; a file that fails its signed length or hash is deleted, never resumed (after a
resume, the artefact is fetched once more from zero before the failure is raised), so a
bad partial file cannot block later attempts. Verification failures are not retried.

Foreign exceptions (httpx, OSError while reading a local site) are translated here into
:class:`NetworkError` / :class:`HTTPStatusError`.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlparse

import httpx
import tenacity

from .._exceptions import (
    ConfigurationError,
    HTTPStatusError,
    NetworkError,
    SyncError,
    TooLarge,
    VerificationError,
)
from .retry import RetryPolicy, parse_retry_after
from .trust import Artefact, ArtefactCheck

__all__ = [
    "Fetcher",
    "FileFetcher",
    "HttpFetcher",
    "ManifestResponse",
    "RetryPolicy",
    "make_fetcher",
    "parse_retry_after",
]

log = logging.getLogger("intercept_sdk.fetch")
_CHUNK = 256 * 1024


@dataclass(frozen=True)
class ManifestResponse:
    """``data`` is None when the server answered 304 Not Modified."""

    data: bytes | None
    etag: str | None


def _retry_after_of(exc: BaseException | None) -> float | None:
    """The server's ``Retry-After`` (seconds) carried by a failure, if any."""
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, (int, float)) else None


def is_retryable(exc: BaseException) -> bool:
    """Network errors, 5xx, 408 and 429 are worth retrying; other failures are not."""
    if isinstance(exc, NetworkError):
        return True
    if isinstance(exc, HTTPStatusError):
        return exc.status_code >= 500 or exc.status_code in (408, 429)
    return False


class Fetcher(Protocol):
    """What the updater needs from a site, wherever it is."""

    description: str

    def manifest(self, etag: str | None, max_bytes: int) -> ManifestResponse: ...

    def root(self, version: int, max_bytes: int) -> bytes | None: ...

    def download(
        self,
        artefact: Artefact,
        dest: Path,
        progress: Callable[[int], None] | None = None,
    ) -> None: ...

    def close(self) -> None: ...


def _read_capped_file(path: Path, max_bytes: int, what: str) -> bytes:
    with path.open("rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLarge(f"{what}: larger than the {max_bytes}-byte cap")
    return data


class FileFetcher:
    """A site copied to a local directory (offline units: the seeds' 文件方式)."""

    def __init__(self, root: Path) -> None:
        self.site_dir = Path(root)
        self.description = str(self.site_dir)
        if not self.site_dir.is_dir():
            raise ConfigurationError(f"platform directory {self.site_dir} does not exist")

    def _path(self, rel: str) -> Path:
        path = (self.site_dir / rel).resolve()
        if not path.is_relative_to(self.site_dir.resolve()):
            raise SyncError(f"path {rel!r} escapes the site directory")
        return path

    def manifest(self, etag: str | None, max_bytes: int) -> ManifestResponse:
        path = self._path("manifest.json")
        try:
            st = path.stat()
            tag = f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'
            if etag is not None and etag == tag:
                return ManifestResponse(None, tag)
            return ManifestResponse(_read_capped_file(path, max_bytes, "manifest.json"), tag)
        except FileNotFoundError:
            raise HTTPStatusError("manifest.json not found in the site directory", 404) from None
        except OSError as exc:
            raise NetworkError(f"cannot read manifest.json: {exc.strerror}") from None

    def root(self, version: int, max_bytes: int) -> bytes | None:
        path = self._path(f"root/{version}.root.json")
        try:
            return _read_capped_file(path, max_bytes, path.name)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise NetworkError(f"cannot read {path.name}: {exc.strerror}") from None

    def download(
        self,
        artefact: Artefact,
        dest: Path,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        check = ArtefactCheck(artefact)
        try:
            with self._path(artefact.path).open("rb") as src, dest.open("wb") as out:
                while chunk := src.read(_CHUNK):
                    check.update(chunk)
                    out.write(chunk)
                    if progress:
                        progress(len(chunk))
        except FileNotFoundError:
            dest.unlink(missing_ok=True)
            raise HTTPStatusError(f"{artefact.path} not found in the site directory", 404) from None
        except TooLarge:
            dest.unlink(missing_ok=True)
            raise
        except OSError as exc:
            raise NetworkError(f"cannot read {artefact.path}: {exc.strerror}") from None
        try:
            check.finish()
        except VerificationError:
            dest.unlink(missing_ok=True)
            raise

    def close(self) -> None:
        return None


class HttpFetcher:
    """A site served over HTTP(S) by the reference platform, any web server or a CDN.

    TLS verification is always on for https (``ca_bundle`` may name a private CA file;
    there is no switch to turn verification off). ``transport`` is for tests
    (``httpx.MockTransport``, respx).
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
        total_timeout: float = 300.0,
        proxy: str | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
        transport: httpx.BaseTransport | None = None,
        retry: RetryPolicy | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if not base_url.endswith("/"):
            base_url += "/"
        self.base_url = base_url
        self.description = base_url
        self.total_timeout = total_timeout
        self.retry = retry or RetryPolicy()
        verify: ssl.SSLContext | bool = True if ca_bundle is None else _ca_context(ca_bundle)
        self._client = httpx.Client(
            base_url=base_url,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout),
            proxy=proxy,
            verify=verify,
            transport=transport,
            follow_redirects=False,
            headers={
                "User-Agent": "intercept-sdk/0.1",
                "Accept-Encoding": "identity",
                **(headers or {}),
            },
        )

    # -- plumbing ------------------------------------------------------------------
    def _retrying(self) -> tenacity.Retrying:
        policy = self.retry
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(policy.attempts),
            wait=lambda rs: policy.delay(
                rs.attempt_number, _retry_after_of(rs.outcome.exception() if rs.outcome else None)
            ),
            retry=tenacity.retry_if_exception(is_retryable),
            sleep=policy.sleep,
            reraise=True,
            before_sleep=lambda rs: log.info(
                "retrying %s after %s", self.base_url, rs.outcome.exception() if rs.outcome else ""
            ),
        )

    def _status_error(self, resp: httpx.Response, what: str) -> HTTPStatusError:
        return HTTPStatusError(
            f"{what}: HTTP {resp.status_code}",
            resp.status_code,
            parse_retry_after(resp.headers.get("Retry-After"), now=self.retry.wall_clock()),
        )

    def _stream(
        self,
        path: str,
        headers: dict[str, str],
        on_response: Callable[[httpx.Response], bool],
        on_chunk: Callable[[bytes], None],
    ) -> None:
        """One request with a total deadline; translates httpx errors.

        The body is consumed one network read at a time (no fixed chunk size, which would
        buffer until it is full), and the deadline is checked after the headers and after
        every read, so a server dripping a byte at a time within the read timeout is cut
        off at ``total_timeout``. Redirects are never followed (:class:`HTTPStatusError`
        with the 3xx status).

        Every request asks for ``Accept-Encoding: identity``: signed lengths and hashes,
        and Range offsets, are those of the files themselves. A server that compresses
        anyway is decoded (``iter_bytes``), and the caps apply to the decoded bytes.
        """
        deadline = time.monotonic() + self.total_timeout

        def check_deadline() -> None:
            if time.monotonic() > deadline:
                raise NetworkError(f"{path}: total deadline of {self.total_timeout}s exceeded")

        try:
            with self._client.stream("GET", path, headers=headers) as resp:
                check_deadline()
                if resp.is_redirect and resp.status_code != 304:  # 304 is not a redirect
                    raise HTTPStatusError(
                        f"{path}: redirect to {resp.headers.get('Location', '?')!r} refused "
                        "(a site is plain files; redirects are not followed)",
                        resp.status_code,
                    )
                if not on_response(resp):
                    return
                for chunk in resp.iter_bytes():
                    check_deadline()
                    on_chunk(chunk)
        except httpx.TimeoutException as exc:
            raise NetworkError(f"{path}: timeout ({type(exc).__name__})") from None
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise NetworkError(f"{path}: {type(exc).__name__}: {exc}") from None

    def _get_capped(
        self, path: str, max_bytes: int, headers: dict[str, str]
    ) -> tuple[httpx.Response, bytes]:
        """GET a small file into memory, refusing more than ``max_bytes``."""
        box: dict[str, httpx.Response] = {}
        buf = bytearray()

        def on_response(resp: httpx.Response) -> bool:
            box["resp"] = resp
            length = resp.headers.get("Content-Length")
            if resp.status_code == 200 and length and length.isdigit() and int(length) > max_bytes:
                raise TooLarge(f"{path}: Content-Length {length} over the {max_bytes}-byte cap")
            return resp.status_code == 200

        def on_chunk(chunk: bytes) -> None:
            buf.extend(chunk)
            if len(buf) > max_bytes:
                raise TooLarge(f"{path}: larger than the {max_bytes}-byte cap")

        self._stream(path, headers, on_response, on_chunk)
        return box["resp"], bytes(buf)

    # -- the Fetcher protocol ------------------------------------------------------
    def manifest(self, etag: str | None, max_bytes: int) -> ManifestResponse:
        headers = {"Cache-Control": "no-cache"}
        if etag:
            headers["If-None-Match"] = etag

        def once() -> ManifestResponse:
            resp, body = self._get_capped("manifest.json", max_bytes, headers)
            if resp.status_code == 304:
                return ManifestResponse(None, etag)
            if resp.status_code != 200:
                raise self._status_error(resp, "manifest.json")
            return ManifestResponse(body, resp.headers.get("ETag"))

        result: ManifestResponse = self._retrying()(once)
        return result

    def root(self, version: int, max_bytes: int) -> bytes | None:
        def once() -> bytes | None:
            resp, body = self._get_capped(f"root/{version}.root.json", max_bytes, {})
            if resp.status_code == 404:
                return None
            if resp.status_code != 200:
                raise self._status_error(resp, f"root/{version}.root.json")
            return body

        result: bytes | None = self._retrying()(once)
        return result

    def download(
        self,
        artefact: Artefact,
        dest: Path,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Stream ``artefact`` into ``dest``, resuming a partial file with HTTP Range.

        The bytes already in ``dest`` are re-hashed, then the rest is requested with
        ``Range: bytes=N-``; a server that ignores Range (200) restarts from zero, a 206
        for another offset or a 416 discards the partial file. The signed length caps the
        download at every step (:class:`TooLarge` as soon as one byte too many arrives).
        When the result fails its check after a resume, the kept prefix may be what was
        wrong, so the artefact is fetched once more from zero; a file that fails its check
        is deleted (a bad file must never block later attempts). Network errors leave the
        partial file for the next attempt, which resumes it.
        """

        def once() -> None:
            have = _usable_prefix(artefact, dest)
            if have == artefact.length:
                return  # a complete, verified earlier download
            try:
                self._fetch_into(artefact, dest, have, progress)
            except VerificationError:
                dest.unlink(missing_ok=True)
                if not have:
                    raise
                log.warning("%s failed its check after a resume; fetching it whole", artefact.path)
                try:
                    self._fetch_into(artefact, dest, 0, progress)
                except VerificationError:
                    dest.unlink(missing_ok=True)
                    raise

        self._retrying()(once)

    def _fetch_into(
        self,
        artefact: Artefact,
        dest: Path,
        have: int,
        progress: Callable[[int], None] | None,
    ) -> None:
        """GET ``artefact`` from byte ``have`` on, appending to the ``have`` bytes in ``dest``."""
        check = ArtefactCheck(artefact)
        if have:
            with dest.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    check.update(chunk)
        headers = {"Range": f"bytes={have}-"} if have else {}
        out_box: list[BinaryIO] = []

        def on_response(resp: httpx.Response) -> bool:
            nonlocal check
            if resp.status_code == 206 and have:
                if _content_range_start(resp.headers.get("Content-Range")) != have:
                    dest.unlink(missing_ok=True)
                    raise NetworkError(f"{artefact.path}: 206 for another range; restarting")
                out_box.append(dest.open("ab"))
            elif resp.status_code == 200:
                check = ArtefactCheck(artefact)
                out_box.append(dest.open("wb"))
            elif resp.status_code == 416 and have:
                dest.unlink(missing_ok=True)
                raise NetworkError(f"{artefact.path}: range not satisfiable; restarting")
            else:
                raise self._status_error(resp, artefact.path)
            return True

        def on_chunk(chunk: bytes) -> None:
            check.update(chunk)
            out_box[0].write(chunk)
            if progress:
                progress(len(chunk))

        try:
            self._stream(artefact.path, headers, on_response, on_chunk)
        finally:
            for out in out_box:
                out.close()
        check.finish()

    def close(self) -> None:
        self._client.close()


def _ca_context(ca_bundle: str | os.PathLike[str]) -> ssl.SSLContext:
    """A verifying TLS context trusting the CA file (or directory) ``ca_bundle`` only."""
    path = Path(ca_bundle)
    try:
        if path.is_dir():
            return ssl.create_default_context(capath=str(path))
        return ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot use CA bundle {path}: {exc}") from None


def _usable_prefix(artefact: Artefact, dest: Path) -> int:
    """Bytes of ``dest`` worth resuming from: 0 if absent or longer than the artefact,
    the full length only if the whole file passes its check (else it is deleted)."""
    try:
        have = dest.stat().st_size
    except FileNotFoundError:
        return 0
    if have > artefact.length:
        dest.unlink(missing_ok=True)
        return 0
    if have == artefact.length:
        check = ArtefactCheck(artefact)
        with dest.open("rb") as f:
            while chunk := f.read(_CHUNK):
                check.update(chunk)
        try:
            check.finish()
        except VerificationError:
            dest.unlink(missing_ok=True)
            return 0
    return have


def _content_range_start(value: str | None) -> int | None:
    """First byte position of a ``Content-Range: bytes A-B/N`` header, or None."""
    if not value or not value.startswith("bytes "):
        return None
    head = value[6:].split("-", 1)[0].strip()
    return int(head) if head.isdigit() else None


def make_fetcher(platform: str | os.PathLike[str], **http_options: object) -> Fetcher:
    """A fetcher for an http(s) URL, a file:// URL or a local directory path."""
    text = os.fspath(platform)
    parsed = urlparse(text)
    if parsed.scheme in ("http", "https"):
        return HttpFetcher(text, **http_options)  # type: ignore[arg-type]
    if parsed.scheme == "file":
        return FileFetcher(Path(unquote(parsed.path)))
    if parsed.scheme in ("", "c", "d") or len(parsed.scheme) == 1:
        return FileFetcher(Path(text))
    raise ConfigurationError(f"platform {text!r}: use an https URL, file:// URL or a directory")
