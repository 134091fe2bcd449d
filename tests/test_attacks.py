"""Every attack on list distribution, end to end, against a real site on a real server.

The site is built with the real command line (``intercept-sdk keygen`` / ``publish`` run as
``python -m intercept_sdk._cli.main``), served over HTTP on loopback by the reference platform
(:class:`PlatformServer`), and synced by a real :class:`Client` (real Ed25519, real
SQLite). Each test syncs a client to version 1, lets an attacker rewrite the served site,
and shows that the sync raises the attack's own exception while version 1 stays in force:
``check`` still answers from it and ``status().last_error`` records the failure.

The attacker holds the platform's real online key where that makes the attack sharper
(a re-signed manifest for mix-and-match, wrong-base deltas, bad state digests), so that
exactly one check is left to catch it.

The list, across versions (``P*`` people, ``R1`` restricted to subscriber ``hotel-a``):

========  ==================  ==================  ==================
entry     v1                  v2                  v3
========  ==================  ==================  ==================
E1 / P1   listed              listed              listed
E2 / P2   listed              revoked             revoked
E3 / R1   restricted (a)      restricted (a)      restricted (a)
E4 / P3   -                   listed              listed
E5 / P4   -                   -                   listed
========  ==================  ==================  ==================
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from intercept_sdk._client.client import Client
from intercept_sdk._client.decisions import Decision, Person
from intercept_sdk._client.fetch import RetryPolicy
from intercept_sdk._client.keys import subscriber_keygen
from intercept_sdk._client.store import Store
from intercept_sdk._exceptions import (
    BaseVersionMismatch,
    ConfigurationError,
    DigestMismatch,
    ExpiredError,
    InterceptError,
    NeverSynced,
    NotRegistered,
    RollbackError,
    RootRotationError,
    SignatureError,
    StoreCorrupted,
    TooLarge,
    TrustRootError,
)
from intercept_sdk._platform.keys import KeyDir, build_root_payload, keygen, rotate_root, sign_root
from intercept_sdk._platform.publish import current_hash_key, publish
from intercept_sdk._platform.server import Limits, PlatformServer
from intercept_sdk._protocol.identifiers import id_number_info
from intercept_sdk._protocol.sealing import record_id
from intercept_sdk._protocol.signing import MANIFEST_TYPE, Envelope, SigningKey, canonical_json
from intercept_sdk._util import atomic_write, format_utc, utcnow
from intercept_sdk.testing import entry_fields, make_id_number

MEASURE = "consumption.star_hotel"
PEOPLE = {
    "P1": make_id_number("1975-03-04", seq=11),
    "P2": make_id_number("1980-07-08", seq=22),
    "R1": make_id_number("1969-11-12", seq=33, male=False),
    "P3": make_id_number("1988-01-02", seq=44),
    "P4": make_id_number("1991-05-06", seq=55),
}


# =========================================================================== the site


def cli(*args: str) -> str:
    """Run the real command line in a fresh interpreter; fail the test on a non-zero exit."""
    proc = subprocess.run(
        [sys.executable, "-m", "intercept_sdk._cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"intercept-sdk {args[0]} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def entry(n: int, person: str, **over: Any) -> dict[str, Any]:
    """A valid source entry (what the platform publishes from) for one person."""
    info = id_number_info(PEOPLE[person])
    fields: dict[str, Any] = {
        "entry_id": f"E{n}",
        "subject_type": "person",
        "name": f"测试{person}",
        "id_number": info.id_number,
        "gender": info.sex,
        "age": info.age_on(dt.date(2024, 5, 1)),
    }
    return entry_fields(n, **{**fields, **over})


def write_source(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
    return path


def source(version: int) -> list[dict[str, Any]]:
    """The platform's full list at ``version`` (see the table in the module docstring)."""
    revoked = {"status": "revoked", "revoked_at": "2024-06-01T08:00:00+08:00"}
    out = [
        entry(1, "P1"),
        entry(2, "P2", **(revoked if version >= 2 else {})),
        entry(3, "R1", visibility="restricted", audience=["hotel-a"]),
    ]
    if version >= 2:
        out.append(entry(4, "P3"))
    if version >= 3:
        out.append(entry(5, "P4"))
    return out


def make_subscriber(keys: Path, directory: Path, subscriber_id: str) -> Path:
    report_pub, box_pub = subscriber_keygen(directory)
    from intercept_sdk._platform.keys import add_subscriber

    add_subscriber(keys, subscriber_id, report_pub.read_bytes(), box_pub.read_bytes())
    return directory


@dataclass
class Pristine:
    """Genuine site versions built once per module with the real CLI (read-only)."""

    keys: Path
    pinned: Path  # the integrator's copy of root.json, outside any cache
    versions: dict[int, Path]
    subscribers: dict[str, Path]
    frozen: Path  # a genuine v4 published long ago, expired


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    base = tmp_path_factory.mktemp("pristine")
    keys = base / "keys"
    site = base / "site"
    cli("keygen", "--keys", str(keys), "--signers", "3", "--threshold", "2",
        "--online-signers", "2", "--online-threshold", "2")  # fmt: skip
    subscribers = {
        sid: make_subscriber(keys, base / f"sub-{sid}", sid) for sid in ("hotel-a", "hotel-b")
    }
    versions: dict[int, Path] = {}
    for v in (1, 2, 3):
        src = write_source(base / f"source-{v}.jsonl", source(v))
        cli("publish", "--source", str(src), "--keys", str(keys), "--site", str(site), "--quiet")
        versions[v] = base / f"site-v{v}"
        shutil.copytree(site, versions[v])
    pinned = base / "pinned-root.json"
    shutil.copyfile(keys / "root.json", pinned)
    # A genuine manifest published two days ago that expired a day ago (a frozen mirror
    # would serve exactly this): same real keys, in a copy so the module's keys stay put.
    old_keys, frozen = base / "keys-copy", base / "site-frozen"
    shutil.copytree(keys, old_keys)
    shutil.copytree(site, frozen)
    publish(source(3), old_keys, frozen, now=utcnow() - dt.timedelta(days=2), expires=86400)
    return Pristine(keys, pinned, versions, subscribers, frozen)


# =========================================================================== the attacker


class Attacker:
    """Rewrites the site the server serves. Holds the platform's real keys when asked."""

    def __init__(self, site: Path, keys: Path) -> None:
        self.site = site
        self.keys = KeyDir(keys)

    # -- genuine content -------------------------------------------------------------
    def install(self, genuine: Path) -> None:
        """Serve a genuinely published site version (artefacts first, manifest last)."""
        for path in sorted(genuine.rglob("*")):
            rel = path.relative_to(genuine)
            if path.is_file() and rel.as_posix() != "manifest.json":
                dest = self.site / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
        self.write("manifest.json", (genuine / "manifest.json").read_bytes())

    def write(self, rel: str, data: bytes) -> None:
        atomic_write(self.site / rel, data, durable=False)

    def read(self, rel: str) -> bytes:
        return (self.site / rel).read_bytes()

    # -- keys ------------------------------------------------------------------------
    def online_keys(self) -> list[SigningKey]:
        return self.keys.online_keys()

    def root_keys(self) -> list[SigningKey]:
        return self.keys.root_keys()

    # -- the manifest ----------------------------------------------------------------
    def payload(self) -> dict[str, Any]:
        """The served manifest's payload, decoded without verifying (attackers don't)."""
        return Envelope.from_bytes(self.read("manifest.json")).payload_json()

    def sign_manifest(self, payload: dict[str, Any], signers: list[SigningKey]) -> bytes:
        from intercept_sdk._protocol.signing import sign_envelope

        data = sign_envelope(MANIFEST_TYPE, canonical_json(payload), signers).to_bytes()
        self.write("manifest.json", data)
        return data

    def resign(self, edit: Callable[[dict[str, Any]], None] | None = None) -> bytes:
        """Edit the served payload and re-sign it with the platform's real online keys."""
        payload = self.payload()
        if edit is not None:
            edit(payload)
        return self.sign_manifest(payload, self.online_keys())

    # -- artefacts -------------------------------------------------------------------
    def add_artefact(
        self, directory: str, name_of: Callable[[str], str], data: bytes
    ) -> dict[str, Any]:
        """Put ``data`` on the site under a content-addressed name; its manifest entry."""
        sha = hashlib.sha256(data).hexdigest()
        rel = f"{directory}/{name_of(sha)}"
        self.write(rel, data)
        return {"path": rel, "sha256": sha, "length": len(data)}


def manifest_of(site: Path) -> dict[str, Any]:
    """The payload of a site's manifest, decoded without verifying."""
    return Envelope.from_bytes((site / "manifest.json").read_bytes()).payload_json()


def forged_root(version: int, signers: list[SigningKey], root: list[SigningKey],
                online: list[SigningKey], threshold: int = 2) -> bytes:  # fmt: skip
    payload = build_root_payload(
        version=version,
        expires=format_utc(utcnow() + dt.timedelta(days=30)),
        root_keys=root,
        root_threshold=threshold,
        online_keys=online,
        online_threshold=1,
    )
    return sign_root(payload, signers)


# =========================================================================== the client side


@dataclass
class Env:
    """One test's served site, its attacker, and a client synced to version 1."""

    pristine: Pristine
    site: Path
    server: PlatformServer
    attacker: Attacker
    tmp: Path
    client: Client
    clients: list[Client] = field(default_factory=list)

    def new_client(
        self, cache: Path | None = None, subscriber: str | None = "hotel-a", **options: Any
    ) -> Client:
        options.setdefault("retry", RetryPolicy(attempts=2, sleep=lambda s: None))
        options.setdefault("push", False)
        if subscriber is not None:
            options.setdefault("subscriber_key", self.pristine.subscribers[subscriber])
        client = Client(
            self.server.url,
            options.pop("trust_root", self.pristine.pinned),
            cache or self.tmp / f"cache-{len(self.clients)}",
            options.pop("subscriber_id", subscriber),
            **options,
        )
        self.clients.append(client)
        return client


def check(client: Client, person: str) -> Decision:
    return client.check(Person(PEOPLE[person]), MEASURE)


def assert_rejected(env: Env, exc: type[InterceptError], match: str | None = None) -> None:
    """The sync raises ``exc``; version 1 stays in force and status() records the error."""
    before = utcnow()
    with pytest.raises(exc, match=match):
        env.client.sync()
    assert_v1_in_force(env.client)
    error = env.client.status().last_error
    assert error is not None
    assert error.kind == exc.__name__
    assert error.at >= before.replace(microsecond=0)


def assert_v1_in_force(client: Client) -> None:
    status = client.status()
    assert status.list_version == 1
    p2 = check(client, "P2")  # revoked in v2: still enforced from v1
    assert (p2.list_version, [m.entry_id for m in p2.matches]) == (1, ["E2"])
    assert check(client, "P3").matches == ()  # listed only from v2 on


@pytest.fixture
def env(pristine: Pristine, tmp_path: Path) -> Iterator[Env]:
    site = tmp_path / "site"
    shutil.copytree(pristine.versions[1], site)
    server = PlatformServer(
        site, state_dir=tmp_path / "platform", limits=Limits(poll_interval=0.05)
    )
    server.start()
    clients: list[Client] = []
    try:
        e = Env(pristine, site, server, Attacker(site, pristine.keys), tmp_path, None, clients)  # type: ignore[arg-type]
        e.client = e.new_client()
        result = e.client.sync()
        assert (result.mode, result.to_version) == ("snapshot", 1)
        assert check(e.client, "P2").action == "block"
        yield e
    finally:
        for c in clients:
            c.close()
        server.stop()


# =========================================================================== baseline


def test_genuine_updates_go_through_and_are_kept_as_received(env: Env) -> None:
    """The control: the same client, the same site, no attacker: v2 then v3 by deltas,
    and the cache holds the signed manifest byte for byte."""
    env.attacker.install(env.pristine.versions[2])
    result = env.client.sync()
    assert (result.mode, result.from_version, result.to_version) == ("delta", 1, 2)
    assert check(env.client, "P2").action == "allow"
    assert check(env.client, "P3").action == "block"
    env.attacker.install(env.pristine.versions[3])
    assert env.client.sync().mode == "delta"
    with Store(Path(env.client.status().cache_dir), readonly=True) as store:
        state = store.state()
    assert state is not None and state.manifest == env.attacker.read("manifest.json")
    assert env.client.verify().version == 3
    assert env.client.status().last_error is None


# =========================================================================== signatures


def _strip(data: bytes) -> bytes:
    obj = json.loads(data)
    obj["signatures"] = []
    return json.dumps(obj).encode()


def _flip(data: bytes) -> bytes:
    obj = json.loads(data)
    for s in obj["signatures"]:
        sig = bytearray(base64.b64decode(s["sig"]))
        sig[-1] ^= 0x80
        s["sig"] = base64.b64encode(bytes(sig)).decode()
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("attack", "match"),
    [
        ("forged", "0 valid signature"),
        ("missing", "no signatures"),
        ("key_not_in_root", "0 valid signature"),
        ("below_threshold", "1 valid signature"),
        ("wrong_role", "another role's key"),
    ],
)
def test_bad_manifest_signatures_are_rejected(env: Env, attack: str, match: str) -> None:
    a = env.attacker
    a.install(env.pristine.versions[2])
    payload = a.payload()
    payload["version"] = 2
    if attack == "forged":
        a.write("manifest.json", _flip(a.read("manifest.json")))
    elif attack == "missing":
        a.write("manifest.json", _strip(a.read("manifest.json")))
    elif attack == "key_not_in_root":
        a.sign_manifest(payload, [SigningKey.generate(), SigningKey.generate()])
    elif attack == "below_threshold":  # one of the two online keys (threshold 2)
        a.sign_manifest(payload, a.online_keys()[:1])
    elif attack == "wrong_role":  # the offline root keys, all three of them
        a.sign_manifest(payload, a.root_keys())
    assert_rejected(env, SignatureError, match)


# =========================================================================== rollback / freeze


def test_rollback_to_an_older_manifest_is_rejected(env: Env) -> None:
    env.attacker.install(env.pristine.versions[2])
    assert env.client.sync().to_version == 2
    env.attacker.write("manifest.json", (env.pristine.versions[1] / "manifest.json").read_bytes())
    with pytest.raises(RollbackError, match="older than trusted 2"):
        env.client.sync()
    assert check(env.client, "P2").action == "allow"  # v2 stays in force
    assert env.client.status().list_version == 2
    assert env.client.status().last_error.kind == "RollbackError"  # type: ignore[union-attr]


def test_other_content_under_the_same_version_is_rejected(env: Env) -> None:
    env.attacker.resign(lambda p: p.update(published_at=format_utc(utcnow())))
    assert_rejected(env, RollbackError, "differs from the trusted manifest")


def test_freeze_a_genuine_but_expired_manifest_is_rejected(env: Env) -> None:
    """A mirror frozen at a manifest the platform published two days ago (real keys,
    ``publish(now=..., expires=...)``): its expiry has passed, so it is refused."""
    env.attacker.install(env.pristine.frozen)
    assert_rejected(env, ExpiredError, "expired")


def test_freeze_detected_by_the_clients_clock(env: Env) -> None:
    """The client's clock (injected) runs past the served manifest's expiry."""
    clock_offset = [dt.timedelta(0)]
    client = env.new_client(clock=lambda: utcnow() + clock_offset[0])
    client.sync()
    env.attacker.install(env.pristine.versions[2])
    clock_offset[0] = dt.timedelta(days=2)  # the mirror keeps serving v2 for two days
    with pytest.raises(ExpiredError, match="manifest 2 expired"):
        client.sync()
    decision = check(client, "P2")
    assert (decision.list_version, decision.stale) == (1, True)
    assert decision.action == "review"  # a stale block is downgraded, never an allow
    assert client.status().stale


class StatusLog(httpx.BaseTransport):
    """The real transport, noting each response's path and status (nothing altered)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.seen: list[tuple[str, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = self.inner.handle_request(request)
        self.seen.append((request.url.path, resp.status_code))
        return resp

    def close(self) -> None:
        self.inner.close()


def test_freeze_cannot_hide_behind_not_modified(env: Env) -> None:
    """A server that keeps answering 304 to the manifest the client holds does not make
    an expired list look current: past its expiry the 304 is a freeze, and an error."""
    offset = [dt.timedelta(0)]
    log = StatusLog()
    client = env.new_client(clock=lambda: utcnow() + offset[0], transport=log)
    client.sync()
    log.seen.clear()
    assert client.sync().mode == "none"
    assert log.seen == [("/manifest.json", 304)]
    offset[0] = dt.timedelta(days=2)
    log.seen.clear()
    with pytest.raises(ExpiredError, match="manifest 1 expired"):
        client.sync()
    assert log.seen == [("/manifest.json", 304)]
    status = client.status()
    assert (status.list_version, status.stale) == (1, True)
    assert status.last_error is not None and status.last_error.kind == "ExpiredError"
    log.close()


# =========================================================================== artefacts


def _v2_delta(env: Env) -> dict[str, Any]:
    (d,) = [d for d in env.attacker.payload()["deltas"] if d["from"] == 1]
    return dict(d)


def test_mix_and_match_artefact_bytes_are_rejected(env: Env) -> None:
    """The file at the signed path has the signed length but other bytes."""
    a = env.attacker
    a.install(env.pristine.versions[2])
    delta = _v2_delta(env)
    v1 = env.pristine.versions[1]
    other = (v1 / manifest_of(v1)["snapshot"]["path"]).read_bytes()
    a.write(delta["path"], (other * (delta["length"] // len(other) + 1))[: delta["length"]])
    assert_rejected(env, DigestMismatch, "SHA-256 differs")
    # The bad bytes were not kept to poison the next attempt (a resume would reuse them).
    downloads = Path(env.client.status().cache_dir) / "downloads"
    assert not (downloads / f"{delta['sha256']}.part").exists()
    a.install(env.pristine.versions[2])  # the mirror is repaired: the next sync heals
    assert env.client.sync().to_version == 2


@pytest.mark.parametrize("target", ["artefact", "manifest", "root"])
def test_endless_data_is_cut_off(env: Env, target: str) -> None:
    """Artefacts are capped by their signed length, the manifest and roots (which have
    none) by the configured maximum (1 MiB, 256 KiB)."""
    a = env.attacker
    a.install(env.pristine.versions[2])
    if target == "artefact":
        delta = _v2_delta(env)
        a.write(delta["path"], a.read(delta["path"]) + b"\0" * 5_000_000)
        match = "more than the signed"
    elif target == "manifest":
        a.write("manifest.json", b" " * (2 << 20) + a.read("manifest.json"))
        match = "cap"
    else:
        a.write("root/2.root.json", b"{" + b" " * (1 << 20))
        match = "cap"
    assert_rejected(env, TooLarge, match)


# =========================================================================== deltas


def test_delta_made_for_another_base_is_refused(env: Env) -> None:
    """The re-signed v3 manifest lists the 2->3 delta as the delta from 1."""
    a = env.attacker
    a.install(env.pristine.versions[3])

    def relabel(p: dict[str, Any]) -> None:
        by_from = {d["from"]: d for d in p["deltas"]}
        by_from[1] = {**by_from[2], "from": 1}
        p["deltas"] = sorted(by_from.values(), key=lambda d: d["from"])

    a.resign(relabel)
    assert_rejected(env, BaseVersionMismatch, "made for 2->3")


def _delta_without_the_revocation(env: Env) -> dict[str, Any]:
    """A 1->2 delta that silently drops E2's revocation, named and bound correctly: only
    the state digest can tell. Returns its manifest entry."""
    a = env.attacker
    genuine = _v2_delta(env)
    lines = gzip.decompress(a.read(genuine["path"])).splitlines(keepends=True)
    # site format 2: the revocation is the removal of E2's record (``D <record id>``)
    _epoch, hash_key = current_hash_key(env.pristine.keys)
    removal = b"D\t" + record_id(hash_key, "E2").hex().encode() + b"\n"
    kept = [ln for ln in lines if ln != removal]
    assert len(kept) == len(lines) - 1
    raw = b"".join(kept)
    entry = a.add_artefact("deltas", lambda sha: f"1-2.{sha}.ndjson.gz", gzip.compress(raw))
    return {"from": 1, **entry, "raw_length": len(raw)}


def test_state_digest_after_a_delta_heals_from_the_snapshot(env: Env) -> None:
    """The delta is rolled back (DigestMismatch) and the genuine snapshot applied: the
    dropped revocation is in force, and nothing of the bad delta is."""
    a = env.attacker
    a.install(env.pristine.versions[2])
    bad = _delta_without_the_revocation(env)
    a.resign(lambda p: p.update(deltas=[bad]))
    result = env.client.sync()
    assert (result.mode, result.to_version) == ("snapshot", 2)
    assert isinstance(result.delta_error, DigestMismatch)
    assert "rolled back" in str(result.delta_error)
    assert check(env.client, "P2").action == "allow"
    assert env.client.verify().version == 2


def test_state_digest_after_a_delta_is_rejected(env: Env) -> None:
    """Same bad delta, and the snapshot re-pointed at version 1's (its true hash): both
    fail their state digest; version 1 stays."""
    a = env.attacker
    a.install(env.pristine.versions[2])
    bad = _delta_without_the_revocation(env)
    v1_snapshot = manifest_of(env.pristine.versions[1])["snapshot"]
    a.resign(lambda p: p.update(deltas=[bad], snapshot=v1_snapshot))
    with pytest.raises(DigestMismatch) as info:
        env.client.sync()
    assert isinstance(info.value.__context__, DigestMismatch)  # the delta's, rolled back
    assert_v1_in_force(env.client)
    assert env.client.status().last_error.kind == "DigestMismatch"  # type: ignore[union-attr]
    assert env.client.verify().version == 1  # the local copy is intact


def test_local_rollback_of_the_cache_is_refused(env: Env) -> None:
    """Someone with write access to the cache points CURRENT back at the previous
    version's database (kept next to the current one): the client refuses to answer from
    it (StoreCorrupted), verify() fails, and the next sync restores the newest version."""
    a = env.attacker
    a.install(env.pristine.versions[2])
    a.resign(lambda p: p.update(deltas=[]))  # v2 by snapshot: v1's database is kept
    assert env.client.sync().mode == "snapshot"
    cache = Path(env.client.status().cache_dir)
    current = (cache / "CURRENT").read_text().strip()
    (older,) = [n.name for n in cache.glob("list-1-*.sqlite")]
    assert older != current
    (cache / "CURRENT").write_text(older + "\n")
    # The client's store notices a moved pointer at its next check (every 50 ms): wait
    # for that (status() reads the pointed-at state without judging it), however slow.
    deadline = time.monotonic() + 10
    while env.client.status().list_version != 1:
        assert time.monotonic() < deadline, "the moved pointer was not noticed"
        time.sleep(0.01)
    with pytest.raises(StoreCorrupted, match="rolled back"):
        check(env.client, "P2")
    with pytest.raises(StoreCorrupted):
        env.client.verify()
    restarted = env.new_client(cache=cache)
    with pytest.raises(StoreCorrupted):
        check(restarted, "P2")
    result = restarted.sync()
    assert (result.mode, result.to_version) == ("snapshot", 2)
    assert check(restarted, "P2").action == "allow"
    assert check(env.client, "P2").list_version == 2


# =========================================================================== roots


@pytest.mark.parametrize(
    "attack", ["only_new_keys", "below_old_threshold", "not_self_signed", "skip", "wrong_number"]
)
def test_bad_root_rotation_is_rejected(env: Env, attack: str) -> None:
    a = env.attacker
    a.install(env.pristine.versions[2])
    genuine_root = a.root_keys()
    new_root = [SigningKey.generate() for _ in range(3)]
    new_online = [SigningKey.generate()]
    root_version = 2
    if attack == "only_new_keys":  # the attacker's own root, signed by its own keys
        a.write("root/2.root.json", forged_root(2, new_root, new_root, new_online))
    elif attack == "below_old_threshold":  # one stolen root key of the 2-of-3
        data = forged_root(2, genuine_root[:1] + new_root, new_root, new_online)
        a.write("root/2.root.json", data)
    elif attack == "not_self_signed":  # the old keys sign, the new root's own do not
        a.write("root/2.root.json", forged_root(2, genuine_root, new_root, new_online))
    elif attack == "skip":  # a doubly signed root 3 with no root 2, and a manifest
        # signed by the genuine online keys that needs it
        a.write("root/3.root.json", forged_root(3, genuine_root + new_root, new_root, new_online))
        root_version = 3
        new_online = a.online_keys()
    else:  # a doubly signed root 3 served as root 2
        a.write("root/2.root.json", forged_root(3, genuine_root + new_root, new_root, new_online))
    payload = a.payload()
    payload["root_version"] = root_version
    a.sign_manifest(payload, new_online)
    assert_rejected(env, RootRotationError)
    cached = Path(env.client.status().cache_dir) / "root"
    assert not list(cached.glob("*.root.json"))  # nothing of it was persisted


def test_root_in_the_writable_cache_is_not_a_trust_root(env: Env) -> None:
    """An attacker who can write the cache plants its own root 2 there and serves a
    manifest signed by that root's online key: a restarted client verifies from the
    pinned root, discards the planted one, and rejects the manifest."""
    a = env.attacker
    cache = Path(env.client.status().cache_dir)
    env.client.close()
    attacker_root = [SigningKey.generate() for _ in range(2)]
    attacker_online = [SigningKey.generate()]
    planted = forged_root(2, attacker_root, attacker_root, attacker_online)
    atomic_write(cache / "root" / "2.root.json", planted)
    a.install(env.pristine.versions[2])
    payload = a.payload()
    payload["root_version"] = 2
    a.sign_manifest(payload, attacker_online)
    env.client = env.new_client(cache=cache)
    assert not (cache / "root" / "2.root.json").exists()  # discarded at start-up
    assert_rejected(env, SignatureError)


def test_pinned_root_that_does_not_verify_is_refused(env: Env, tmp_path: Path) -> None:
    """A trust root below its own threshold is refused before anything is read."""
    only_one = forged_root(1, env.attacker.root_keys()[:1], env.attacker.root_keys(),
                           env.attacker.online_keys())  # fmt: skip
    with pytest.raises(TrustRootError, match="does not verify"):
        env.new_client(cache=tmp_path / "fresh", trust_root=only_one)


def test_root_rotation_across_three_versions(tmp_path: Path) -> None:
    """rotate_root twice (new root keys, then new online keys), publish with the CLI: the
    client walks 1 -> 2 -> 3, keeps each root as received, trusts only the new online key,
    and a restarted client starts from the cached chain."""
    keys, site = tmp_path / "keys", tmp_path / "site"
    keygen(keys)  # the CLI's keygen and publish are exercised by the module fixture
    sub = make_subscriber(keys, tmp_path / "sub", "hotel-a")
    publish(source(1), keys, site)
    pinned = tmp_path / "pinned.json"
    shutil.copyfile(keys / "root.json", pinned)
    old_online = KeyDir(keys).online_keys()
    retry = RetryPolicy(attempts=1)
    with PlatformServer(site, state_dir=tmp_path / "platform") as server:
        client = Client(server.url, pinned, tmp_path / "cache", "hotel-a",
                        subscriber_key=sub, retry=retry, push=False)  # fmt: skip
        try:
            assert client.sync().to_version == 1
            assert rotate_root(keys, new_root_signers=3, new_threshold=2) == 2
            assert rotate_root(keys, rotate_online=True) == 3
            src = write_source(tmp_path / "v2.jsonl", source(2))
            cli("publish", "--source", str(src), "--keys", str(keys), "--site", str(site),
                "--quiet")  # fmt: skip
            result = client.sync()
            assert (result.mode, result.to_version) == ("delta", 2)
            assert client._core.updater.trusted.root.version == 3
            for n in (2, 3):  # persisted exactly as received
                assert (tmp_path / "cache" / "root" / f"{n}.root.json").read_bytes() == (
                    site / "root" / f"{n}.root.json"
                ).read_bytes()
            assert check(client, "P3").action == "block"
            # The retired online key no longer signs anything the client accepts.
            attacker = Attacker(site, keys)
            payload = attacker.payload()
            payload["version"] = 3
            attacker.sign_manifest(payload, old_online)
            with pytest.raises(SignatureError):
                client.sync()
        finally:
            client.close()
        restarted = Client(server.url, pinned, tmp_path / "cache", "hotel-a",
                           subscriber_key=sub, retry=retry, push=False)  # fmt: skip
        try:
            assert restarted._core.updater.trusted.root.version == 3  # from the cache
            assert restarted.status().list_version == 2
        finally:
            restarted.close()


# =========================================================================== restricted entries


def test_restricted_entry_is_readable_only_by_its_subscriber(env: Env) -> None:
    """R1 is restricted to hotel-a: hotel-a's client enforces it; hotel-b (registered,
    its own keys) never sees it, and an unnamed client or hotel-b posing as hotel-a cannot
    read the list at all (site format 2)."""
    assert check(env.client, "R1").action == "block"
    assert [m.entry_id for m in check(env.client, "R1").matches] == ["E3"]
    other = env.new_client(subscriber="hotel-b")
    other.sync()
    assert check(other, "R1").matches == ()
    assert check(other, "P1").action == "block"  # the public list is the same
    # Site format 2: a client without a subscriber key cannot read the list at all.
    anonymous = env.new_client(subscriber=None, subscriber_id=None)
    with pytest.raises(ConfigurationError, match="X25519"):
        anonymous.sync()
    with pytest.raises(NeverSynced):
        check(anonymous, "R1")
    # hotel-b's keys under hotel-a's name: no box is addressed to that (name, key) pair.
    impostor = env.new_client(subscriber="hotel-b", subscriber_id="hotel-a")
    with pytest.raises(NotRegistered):
        impostor.sync()
    with pytest.raises(NeverSynced):
        check(impostor, "R1")
    # R1's sealed record reached hotel-a's cache only, never hotel-b's in any form.
    _epoch, hash_key = current_hash_key(env.pristine.keys)
    rid = record_id(hash_key, "E3").hex()
    for c, held in ((env.client, True), (other, False)):
        with Store(Path(c.status().cache_dir), readonly=True) as store:
            assert (rid in store.get_records([rid])) is held
