"""Running the platform app: in a thread, in the foreground, or as a separate process.

:class:`PlatformServer` runs the app under uvicorn in a background thread (tests, the
demo) or in the calling thread (``intercept-sdk serve``); :func:`run_server_process`
starts ``python -m intercept_sdk._platform.server`` (:func:`main`) as a child process and
returns once it listens. Every stop is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import uvicorn
from starlette.middleware import Middleware

from ..._exceptions import ConfigurationError
from .app import Platform, create_app
from .guard import guarded_protocol
from .limits import Limits

__all__ = [
    "PlatformServer",
    "ServerProcess",
    "default_state_dir",
    "main",
    "run_server_process",
]

log = logging.getLogger("intercept_sdk.platform")


class _UvicornServer(uvicorn.Server):
    """uvicorn.Server that tells the app to end its event streams before shutting down.

    Without that, an open ``/events`` stream would hold the graceful shutdown until its
    timeout. ``on_started`` runs once the socket is listening.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        platform: Platform,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._platform = platform
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_started is not None:
            self._on_started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._platform.begin_shutdown()
        await super().shutdown(sockets)


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves: with port 0 the port is known race-free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on accepted sockets
    # whose proto says TCP, and without it every small response waits ~40 ms (Nagle
    # against delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def default_state_dir() -> Path:
    """Where ``intercept-sdk serve`` keeps its state when given no ``--state``:
    ``$INTERCEPT_PLATFORM_STATE``, else ``$XDG_STATE_HOME/intercept-sdk/platform``, else
    ``~/.local/state/intercept-sdk/platform``. Never a temporary directory: acknowledged
    reports must survive the process."""
    explicit = os.environ.get("INTERCEPT_PLATFORM_STATE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "intercept-sdk" / "platform"


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class PlatformServer:
    """The platform app under uvicorn: in a background thread (tests, demo) or foreground.

    ``start()`` returns once the socket listens; ``stop()`` is idempotent and bounded (a
    graceful shutdown of at most ``Limits.graceful_shutdown`` s, then a forced exit).
    ``state_dir=None`` uses a temporary directory removed by ``stop()`` -- for tests and
    throw-away embedding only: the command line (``intercept-sdk serve``, :func:`main`)
    always passes a persistent one (:func:`default_state_dir`). ``database`` selects
    another report store (``postgresql://...``). ``middleware`` is passed to
    :func:`create_app` (e.g. a test's fault simulator).
    """

    def __init__(
        self,
        site_dir: Path,
        *,
        subscribers_dir: Path | None = None,
        state_dir: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        limits: Limits | None = None,
        access_log: bool = False,
        middleware: Sequence[Middleware] = (),
        database: str | None = None,
    ) -> None:
        self.site_dir = Path(site_dir)
        self.database = database
        self.subscribers_dir = Path(subscribers_dir) if subscribers_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="intercept-platform-")
            state_dir = Path(self._tmp.name)
        self.state_dir = Path(state_dir)
        self.host = host
        self.middleware = tuple(middleware)
        self.limits = limits or Limits()
        self._requested_port = port
        self._log_level = log_level
        self._access_log = access_log
        self._lock = threading.Lock()
        self._port: int | None = None
        self._server: _UvicornServer | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._platform: Platform | None = None
        self._error: BaseException | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the platform server is not started")
        return self._port

    @property
    def url(self) -> str:
        return _url(self.host, self.port)

    @property
    def operator_token_path(self) -> Path:
        """``<state_dir>/operator.token`` (exists once the server was prepared)."""
        return self.state_dir / "operator.token"

    def operator_headers(self) -> dict[str, str]:
        """``{"Authorization": "Bearer <operator token>"}`` for ``GET /reports``/``/stats``."""
        token = self.operator_token_path.read_text(encoding="ascii").strip()
        return {"Authorization": f"Bearer {token}"}

    def _prepare(
        self, on_started: Callable[[], None] | None = None
    ) -> tuple[_UvicornServer, socket.socket]:
        if self._stopped:
            raise RuntimeError("a stopped PlatformServer cannot be restarted")
        if self._server is not None:
            raise RuntimeError("the platform server is already running")
        app = create_app(
            self.site_dir,
            subscribers_dir=self.subscribers_dir,
            state_dir=self.state_dir,
            limits=self.limits,
            middleware=self.middleware,
            database=self.database,
        )
        platform: Platform = app.state.platform
        try:
            sock = _bind(self.host, self._requested_port)
        except OSError as exc:
            platform.store.close()
            raise ConfigurationError(
                f"cannot listen on {self.host}:{self._requested_port}: {exc.strerror}"
            ) from None
        config = uvicorn.Config(
            app,
            log_level=self._log_level,
            log_config=None,  # leave the host application's logging alone
            access_log=self._access_log,
            lifespan="on",
            loop="asyncio",
            http=guarded_protocol(self.limits),
            ws="none",
            backlog=2048,
            limit_concurrency=self.limits.max_connections,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=self.limits.graceful_shutdown,
        )
        self._platform = platform
        self._sock = sock
        self._port = sock.getsockname()[1]
        self._server = _UvicornServer(config, platform, on_started)
        return self._server, sock

    def start(self, timeout: float = 10.0) -> PlatformServer:
        """Run in a daemon thread; return once listening (raise if it did not start)."""
        with self._lock:
            server, sock = self._prepare()

            def run() -> None:
                try:
                    server.run(sockets=[sock])
                except BaseException as exc:  # SystemExit on a failed lifespan startup
                    self._error = exc
                    log.error("platform server thread ended: %r", exc)

            self._thread = threading.Thread(
                target=run, name=f"intercept-platform-{self._port}", daemon=True
            )
            self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive():
                self.stop()
                raise RuntimeError(f"the platform server failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the platform server did not start within {timeout} s")
            time.sleep(0.01)
        log.info("platform server listening on %s", self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and wait at most ``timeout`` s (then force); safe to call more than once."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            server, thread = self._server, self._thread
        if self._platform is not None:
            self._platform.begin_shutdown()
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout)
            if thread.is_alive():
                server.force_exit = True
                thread.join(1.0)
                if thread.is_alive():  # pragma: no cover - uvicorn did not honour force_exit
                    log.warning("platform server thread did not stop; abandoning it")
        self._cleanup()

    def _cleanup(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._platform is not None:
            self._platform.store.close()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()

    def serve_forever(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Run in the calling thread until SIGINT/SIGTERM; ``on_ready(url)`` once listening.

        Ctrl-C shuts down gracefully and returns normally.
        """
        with self._lock:
            server, _ = self._prepare(
                (lambda: on_ready(self.url)) if on_ready is not None else None
            )
            sock = self._sock
            assert sock is not None
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            pass
        finally:
            with self._lock:
                self._stopped = True
            self._cleanup()

    def __enter__(self) -> PlatformServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- subprocess


class ServerProcess(subprocess.Popen[bytes]):
    """``python -m intercept_sdk._platform.server`` as a separate process (a real Popen).

    Adds ``url``/``port`` (known once it printed its ``listening on`` line) and a bounded
    ``stop()``; using it as a context manager stops it on exit.
    """

    url: str
    port: int

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL. Returns the exit status."""
        if self.poll() is None:
            self.terminate()
            try:
                self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self.wait(5.0)
        if self.stdout is not None:
            self.stdout.close()
        return self.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_server_process(
    site_dir: Path,
    *,
    subscribers_dir: Path | None = None,
    state_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    timeout: float = 15.0,
    env: dict[str, str] | None = None,
    database: str | None = None,
    extra_args: Sequence[str] = (),
) -> ServerProcess:
    """Start the server as a child process and return once it listens.

    The child binds the port itself (``port=0`` picks a free one) and reports it, so
    there is no race. Its stderr is inherited; its stdout carries only that one line.
    """
    cmd = [sys.executable, "-m", "intercept_sdk._platform.server", "--site", str(site_dir)]
    cmd += ["--host", host, "--port", str(port), "--log-level", log_level]
    if subscribers_dir is not None:
        cmd += ["--subscribers", str(subscribers_dir)]
    if state_dir is not None:
        cmd += ["--state", str(state_dir)]
    if database is not None:
        cmd += ["--database", database]
    cmd += list(extra_args)
    proc = ServerProcess(cmd, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"platform process did not start within {timeout} s")
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError(
                        f"platform process exited before listening (status {proc.wait(5)})"
                    )
                buf += chunk
                if len(buf) > 4096:
                    raise RuntimeError("platform process printed something unexpected")
        line = buf.split(b"\n", 1)[0].decode(errors="replace").strip()
        m = re.fullmatch(r"listening on (http://\S+:(\d+))", line)
        if m is None:
            raise RuntimeError(f"unexpected first line from platform process: {line[:200]!r}")
    except BaseException:
        proc.stop(timeout=2.0)
        raise
    proc.url, proc.port = m.group(1), int(m.group(2))
    return proc


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m intercept_sdk._platform.server``: serve a site until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m intercept_sdk._platform.server", description="Reference platform server."
    )
    parser.add_argument("--site", type=Path, required=True, help="published site directory")
    parser.add_argument("--subscribers", type=Path, help="dir of <id>.ed25519.pem keys")
    parser.add_argument(
        "--state", type=Path, help="state dir: operator.token, reports.sqlite (default: "
        "$INTERCEPT_PLATFORM_STATE or ~/.local/state/intercept-sdk/platform)"
    )  # fmt: skip
    parser.add_argument("--database", help="postgresql://... (default: SQLite in --state)")
    parser.add_argument("--behind-proxy", action="store_true", help=_BEHIND_PROXY_HELP)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    def ready(url: str) -> None:
        print(f"listening on {url}", flush=True)

    return serve_command(
        site=args.site,
        subscribers=args.subscribers,
        state=args.state,
        database=args.database,
        behind_proxy=args.behind_proxy,
        host=args.host,
        port=args.port,
        log_level=args.log_level.lower(),
        access_log=args.access_log,
        on_ready=ready,
    )


_BEHIND_PROXY_HELP = (
    "every request comes from a load balancer: per-client limits become global ones "
    "(enforce them at the balancer)"
)


def serve_command(
    *,
    site: Path,
    subscribers: Path | None,
    state: Path | None,
    database: str | None,
    behind_proxy: bool,
    host: str,
    port: int,
    log_level: str,
    access_log: bool,
    on_ready: Callable[[str], None],
) -> int:
    """Serve in the foreground until SIGINT/SIGTERM, then exit 0 after a graceful stop.

    What ``intercept-sdk serve`` and ``python -m intercept_sdk._platform.server`` share:
    the state directory is persistent (``state`` or :func:`default_state_dir`), SIGTERM
    is handled like Ctrl-C (uvicorn stops accepting, finishes in-flight requests for up
    to ``Limits.graceful_shutdown`` s, the store is closed), and a configuration problem
    is exit status 2 with one line on stderr.
    """

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    state_dir = state if state is not None else default_state_dir()
    try:
        server = PlatformServer(
            site,
            subscribers_dir=subscribers,
            state_dir=state_dir,
            host=host,
            port=port,
            log_level=log_level,
            access_log=access_log,
            database=database,
            limits=Limits.behind_proxy() if behind_proxy else Limits(),
        )
        server.serve_forever(on_ready=on_ready)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
