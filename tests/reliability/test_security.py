"""Attacks: every verification attack on list distribution, attacks on the local cache,
path traversal, decompression bombs, and report forgery against the reference platform.

The site is genuinely published (2-of-3 root keys, 2-of-2 online keys), served over
HTTP by the reference platform, and synced by a real client. Each run starts from a
client at a known version, lets the attacker rewrite the served site (holding the real
online keys where that makes the attack sharper), and checks that the sync raises the
attack's own exception while the previous version stays in force (its decisions, a
verifying cache, the error in ``status()``); then the genuine site comes back and the
next sync heals. Runs repeat with random variations (which byte is flipped, how much
data is appended, which path escapes...).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import gzip
import hashlib
import json
import os
import random
import shutil
import sqlite3
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from intercept_sdk import Client, Person
from intercept_sdk._client.audit import _dumps as _audit_dumps
from intercept_sdk._client.audit import verify_audit
from intercept_sdk._client.fetch import RetryPolicy
from intercept_sdk._client.keys import load_subscriber_key, subscriber_keygen
from intercept_sdk._client.store import _Codec
from intercept_sdk._exceptions import (
    BaseVersionMismatch,
    DigestMismatch,
    ExpiredError,
    FormatError,
    InterceptError,
    RollbackError,
    RootRotationError,
    SignatureError,
    StoreCorrupted,
    TooLarge,
    VerificationError,
)
from intercept_sdk._platform.keys import (
    KeyDir,
    add_subscriber,
    build_root_payload,
    keygen,
    sign_root,
)
from intercept_sdk._platform.publish import current_hash_key, publish
from intercept_sdk._platform.server import Limits, PlatformServer
from intercept_sdk._protocol.sealing import (
    BOX_PAD_QUANTUM,
    box_context,
    box_locator,
    box_payload,
    pad,
    record_id,
)
from intercept_sdk._protocol.signing import (
    MANIFEST_TYPE,
    REPORT_TYPE,
    Envelope,
    SigningKey,
    canonical_json,
    load_x25519_public,
    seal_box,
    sign_envelope,
)
from intercept_sdk._util import atomic_write, format_utc, utcnow
from intercept_sdk.testing import TestPlatform

from ._support import (
    MEASURE,
    SUBSCRIBER,
    Tally,
    person_ids,
    plain_person_entry,
    platform_report_rows,
    size,
)

REPS = size(1, 5)
OTHER = "other-unit"
IDS = person_ids(6)

pytestmark = pytest.mark.timeout(size(180, 1200))


# =========================================================================== the genuine site


def source(version: int) -> list[dict[str, Any]]:
    """v1: P0, P1 listed, P2 restricted to the test unit; v2: P1 revoked, P3 listed;
    v3: P4 listed."""
    revoked = {"status": "revoked", "revoked_at": "2024-06-01T08:00:00+08:00"}
    out = [
        plain_person_entry(IDS[0], "E00000"),
        plain_person_entry(IDS[1], "E00001", **(revoked if version >= 2 else {})),
        plain_person_entry(IDS[2], "E00002", visibility="restricted", audience=[SUBSCRIBER]),
    ]
    if version >= 2:
        out.append(plain_person_entry(IDS[3], "E00003"))
    if version >= 3:
        out.append(plain_person_entry(IDS[4], "E00004"))
    return out


EXPECTED = {
    1: ["block", "block", "block", "allow", "allow", "allow"],
    2: ["block", "allow", "block", "block", "allow", "allow"],
    3: ["block", "allow", "block", "block", "block", "allow"],
}


@dataclass
class Site:
    keys: Path
    pinned: Path
    subs: dict[str, Path]
    versions: dict[int, Path]
    frozen: Path
    caches: dict[int, Path]
    bomb: bytes  # gzip of 64 MiB of zeros


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    base = tmp_path_factory.mktemp("security")
    keys = base / "keys"
    keygen(keys, signers=3, threshold=2, online_signers=2, online_threshold=2)
    subs = {}
    for sid in (SUBSCRIBER, OTHER):
        report_pub, box_pub = subscriber_keygen(base / f"sub-{sid}")
        add_subscriber(keys, sid, report_pub.read_bytes(), box_pub.read_bytes())
        subs[sid] = base / f"sub-{sid}"
    pinned = base / "pinned-root.json"
    shutil.copyfile(keys / "root.json", pinned)
    live = base / "live"
    versions = {}
    for v in (1, 2, 3):
        publish(source(v), keys, live, keep_versions=10)
        versions[v] = base / f"site-v{v}"
        shutil.copytree(live, versions[v])
    frozen_keys, frozen = base / "keys-copy", base / "site-frozen"
    shutil.copytree(keys, frozen_keys)
    shutil.copytree(live, frozen)
    publish(source(3), frozen_keys, frozen, now=utcnow() - dt.timedelta(days=2), expires=86400)
    caches = {1: base / "cache-v1", 2: base / "cache-v2"}
    with Client(
        str(versions[1]),
        pinned,
        caches[1],
        SUBSCRIBER,
        subscriber_key=subs[SUBSCRIBER],
        audit=False,
    ) as c:
        assert c.sync().mode == "snapshot"
    shutil.copytree(caches[1], caches[2])  # a cache at v2 went through v1, as real ones do
    with Client(
        str(versions[2]),
        pinned,
        caches[2],
        SUBSCRIBER,
        subscriber_key=subs[SUBSCRIBER],
        audit=False,
    ) as c:
        assert c.sync().mode == "delta"
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    return Site(keys, pinned, subs, versions, frozen, caches, bomb)


# =========================================================================== the attacker


class Attacker:
    """Rewrites the served site. Holds the platform's real keys when asked."""

    def __init__(self, served: Path, keys: Path) -> None:
        self.site = served
        self.keys = KeyDir(keys)

    def install(self, genuine: Path) -> None:
        """Serve a genuine version (artefacts first, the manifest last)."""
        for path in sorted(genuine.rglob("*")):
            rel = path.relative_to(genuine)
            if path.is_file() and rel.as_posix() != "manifest.json":
                dest = self.site / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                if not dest.exists() or dest.read_bytes() != path.read_bytes():
                    shutil.copyfile(path, dest)
        self.write("manifest.json", (genuine / "manifest.json").read_bytes())

    def write(self, rel: str, data: bytes) -> None:
        (self.site / rel).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.site / rel, data, durable=False)

    def read(self, rel: str) -> bytes:
        return (self.site / rel).read_bytes()

    def payload(self) -> dict[str, Any]:
        return Envelope.from_bytes(self.read("manifest.json")).payload_json()

    def sign(self, payload: dict[str, Any], signers: list[SigningKey]) -> bytes:
        data = sign_envelope(MANIFEST_TYPE, canonical_json(payload), signers).to_bytes()
        self.write("manifest.json", data)
        return data

    def resign(self, edit: Callable[[dict[str, Any]], None]) -> bytes:
        """Edit the served payload and sign it with the platform's real online keys."""
        payload = self.payload()
        edit(payload)
        return self.sign(payload, self.keys.online_keys())

    def add(self, directory: str, name_of: Callable[[str], str], data: bytes) -> dict[str, Any]:
        sha = hashlib.sha256(data).hexdigest()
        rel = f"{directory}/{name_of(sha)}"
        self.write(rel, data)
        return {"path": rel, "sha256": sha, "length": len(data)}

    def delta_from(self, base: int) -> dict[str, Any]:
        (d,) = [d for d in self.payload()["deltas"] if d["from"] == base]
        return dict(d)


def forged_root(
    version: int,
    signers: list[SigningKey],
    root: list[SigningKey],
    online: list[SigningKey],
    threshold: int = 2,
) -> bytes:
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
    site: Site
    served: Path
    server: PlatformServer
    tmp: Path
    attacker: Attacker = field(init=False)
    clients: list[Client] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.attacker = Attacker(self.served, self.site.keys)

    def reset(self, start: int) -> Client:
        """Serve genuine ``start`` and return a client whose cache is at ``start``."""
        for c in self.clients:
            c.close()
        self.clients.clear()
        shutil.rmtree(self.served)
        shutil.copytree(self.site.versions[start], self.served)
        cache = self.tmp / "cache"
        if cache.exists():
            shutil.rmtree(cache)
        shutil.copytree(self.site.caches[start], cache)
        return self.client(cache)

    def client(self, cache: Path, sub: str = SUBSCRIBER, **options: Any) -> Client:
        options.setdefault("retry", RetryPolicy(attempts=1))
        options.setdefault("push", False)
        options.setdefault("audit", False)
        c = Client(
            self.server.url,
            self.site.pinned,
            cache,
            sub,
            subscriber_key=self.site.subs[sub],
            **options,
        )
        self.clients.append(c)
        return c


@pytest.fixture(scope="module")
def env(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One served site and server for the module; every run resets both ends."""
    tmp_path = tmp_path_factory.mktemp("security-env")
    served = tmp_path / "served"
    shutil.copytree(site.versions[1], served)
    server = PlatformServer(served, state_dir=tmp_path / "platform", limits=Limits(poll_interval=1))
    server.start()
    e = Env(site, served, server, tmp_path)
    try:
        yield e
    finally:
        for c in e.clients:
            c.close()
        server.stop()


def in_force(client: Client, version: int) -> None:
    """Every decision is that of ``version``; the cache verifies."""
    for i, want in enumerate(EXPECTED[version]):
        d = client.check(Person(IDS[i]), MEASURE)
        assert (d.list_version, d.action) == (version, want), (i, d.list_version, d.action, want)
    assert client.verify().version == version


# =========================================================================== site attacks

Attack = Callable[[Attacker, Site, random.Random], None]


def _flip_sig(a: Attacker, s: Site, rng: random.Random) -> None:
    obj = json.loads(a.read("manifest.json"))
    for sig in obj["signatures"]:
        raw = bytearray(base64.b64decode(sig["sig"]))
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        sig["sig"] = base64.b64encode(bytes(raw)).decode()
    a.write("manifest.json", json.dumps(obj).encode())


def _strip(a: Attacker, s: Site, rng: random.Random) -> None:
    obj = json.loads(a.read("manifest.json"))
    obj["signatures"] = []
    a.write("manifest.json", json.dumps(obj).encode())


def _alter_payload(a: Attacker, s: Site, rng: random.Random) -> None:
    obj = json.loads(a.read("manifest.json"))
    payload = json.loads(base64.b64decode(obj["payload"]))
    payload["state"]["entries"] += rng.randint(1, 5)  # signed by nobody any more
    obj["payload"] = base64.b64encode(canonical_json(payload)).decode()
    a.write("manifest.json", json.dumps(obj).encode())


def _foreign_keys(a: Attacker, s: Site, rng: random.Random) -> None:
    a.sign(a.payload(), [SigningKey.generate(), SigningKey.generate()])


def _below_threshold(a: Attacker, s: Site, rng: random.Random) -> None:
    a.sign(a.payload(), [rng.choice(a.keys.online_keys())])


def _wrong_role(a: Attacker, s: Site, rng: random.Random) -> None:
    a.sign(a.payload(), a.keys.root_keys())


def _rollback(a: Attacker, s: Site, rng: random.Random) -> None:
    a.write("manifest.json", (s.versions[1] / "manifest.json").read_bytes())


def _same_version(a: Attacker, s: Site, rng: random.Random) -> None:
    a.write("manifest.json", (s.versions[1] / "manifest.json").read_bytes())
    a.resign(
        lambda p: p.update(
            published_at=format_utc(utcnow() - dt.timedelta(seconds=rng.randint(1, 9999)))
        )
    )


def _freeze(a: Attacker, s: Site, rng: random.Random) -> None:
    a.install(s.frozen)


def _mix_and_match(a: Attacker, s: Site, rng: random.Random) -> None:
    rel = rng.choice([a.delta_from(1)["path"], a.payload()["snapshot"]["path"]])
    data = bytearray(a.read(rel))
    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    a.write(rel, bytes(data))
    # Only the delta is fetched from v1; make the snapshot path the one that counts too.
    if rel.startswith("snapshots/"):
        a.resign(lambda p: p.update(deltas=[]))


def _endless_artefact(a: Attacker, s: Site, rng: random.Random) -> None:
    rel = a.delta_from(1)["path"]
    a.write(rel, a.read(rel) + os.urandom(rng.randint(1, 3_000_000)))


def _endless_manifest(a: Attacker, s: Site, rng: random.Random) -> None:
    a.write("manifest.json", b" " * ((1 << 20) + rng.randint(1, 1 << 20)) + a.read("manifest.json"))


def _endless_root(a: Attacker, s: Site, rng: random.Random) -> None:
    a.write("root/2.root.json", b"{" + b" " * ((1 << 18) + rng.randint(1, 1 << 18)))


def _other_base(a: Attacker, s: Site, rng: random.Random) -> None:
    a.install(s.versions[3])

    def relabel(p: dict[str, Any]) -> None:
        by_from = {d["from"]: d for d in p["deltas"]}
        by_from[1] = {**by_from[2], "from": 1}
        p["deltas"] = sorted(by_from.values(), key=lambda d: d["from"])

    a.resign(relabel)


def _delta_without_revocation(a: Attacker) -> dict[str, Any]:
    genuine = a.delta_from(1)
    lines = gzip.decompress(a.read(genuine["path"])).splitlines(keepends=True)
    # site format 2: the revocation is the removal of E00001's record (``D <record id>``)
    _epoch, hash_key = current_hash_key(a.keys.path)
    removal = b"D\t" + record_id(hash_key, "E00001").hex().encode() + b"\n"
    kept = [ln for ln in lines if ln != removal]
    assert len(kept) == len(lines) - 1
    raw = b"".join(kept)
    entry = a.add("deltas", lambda sha: f"1-2.{sha}.ndjson.gz", gzip.compress(raw))
    return {"from": 1, **entry, "raw_length": len(raw)}


def _bad_delta_and_snapshot(a: Attacker, s: Site, rng: random.Random) -> None:
    bad = _delta_without_revocation(a)
    v1 = Envelope.from_bytes((s.versions[1] / "manifest.json").read_bytes()).payload_json()
    a.resign(lambda p: p.update(deltas=[bad], snapshot=v1["snapshot"]))


def _root_attack(kind: str) -> Attack:
    def attack(a: Attacker, s: Site, rng: random.Random) -> None:
        genuine = a.keys.root_keys()
        new_root = [SigningKey.generate() for _ in range(3)]
        new_online = [SigningKey.generate()]
        root_version = 2
        if kind == "only new keys":
            a.write("root/2.root.json", forged_root(2, new_root, new_root, new_online))
        elif kind == "below the old threshold":
            a.write(
                "root/2.root.json",
                forged_root(2, [rng.choice(genuine), *new_root], new_root, new_online),
            )
        elif kind == "not signed by its own keys":
            a.write("root/2.root.json", forged_root(2, genuine, new_root, new_online))
        elif kind == "skips a version":
            a.write("root/3.root.json", forged_root(3, genuine + new_root, new_root, new_online))
            root_version, new_online = 3, a.keys.online_keys()
        else:  # a doubly signed root 3 served as root 2
            a.write("root/2.root.json", forged_root(3, genuine + new_root, new_root, new_online))
        payload = a.payload()
        payload["root_version"] = root_version
        a.sign(payload, new_online)

    return attack


def _our_locator(s: Site) -> str:
    """The opaque name of SUBSCRIBER's box (format 2: boxes are not named by subscriber)."""
    pub = load_x25519_public((s.subs[SUBSCRIBER] / "restricted.x25519.pub.pem").read_bytes())
    return box_locator(SUBSCRIBER, pub.public_bytes_raw())


def _box_swap(which: str) -> Attack:
    def attack(a: Attacker, s: Site, rng: random.Random) -> None:
        v2 = Envelope.from_bytes((s.versions[2] / "manifest.json").read_bytes()).payload_json()
        v1 = Envelope.from_bytes((s.versions[1] / "manifest.json").read_bytes()).payload_json()
        ours = _our_locator(s)
        if which == "another version's box, own path":
            box = v1["boxes"][ours]  # its path names version 1: refused before opening
        elif which == "another version's box":  # v1's bytes under a version-2 name
            data = (s.versions[1] / v1["boxes"][ours]["path"]).read_bytes()
            entry = a.add("boxes/2", lambda sha: f"{ours}.{sha}.box", data)
            box = {**v1["boxes"][ours], **entry}
        else:  # a box sealed for another subscriber, listed under our locator
            entry = a.add("boxes/2", lambda sha: f"{ours}.{sha}.box", _sealed_for_other(s))
            box = {**v2["boxes"][ours], **entry}
        a.resign(lambda p: p["boxes"].update({ours: box}))

    return attack


def _sealed_for_other(s: Site) -> bytes:
    """A well-formed version-2 box under our locator, but sealed to OTHER's key (with a
    hash key of the attacker's choosing inside)."""
    pub = load_x25519_public((s.subs[OTHER] / "restricted.x25519.pub.pem").read_bytes())
    payload = box_payload(2, 1, os.urandom(32), [])
    return seal_box(pub, pad(payload, BOX_PAD_QUANTUM), box_context(_our_locator(s), 2))


TRAVERSALS = [
    ("snapshot", "snapshots/../manifest.json"),
    ("snapshot", "snapshots/../../../../etc/passwd"),
    ("snapshot", "/etc/passwd"),
    ("snapshot", "snapshots/%2e%2e/manifest.json"),
    ("snapshot", "snapshots/..%2fmanifest.json"),
    ("snapshot", "deltas/1-2.x.ndjson.gz"),
    ("delta", "deltas/../snapshots/x"),
    ("delta", "deltas/./../../root/1.root.json"),
    ("delta", "snapshots/1.abc.ndjson.gz"),
    ("box", "boxes/2/../../manifest.json"),
    ("box", "boxes/../manifest.json"),
    ("box", "/etc/passwd"),
    ("box", "snapshots/2.x.box"),
]


def _traversal(a: Attacker, s: Site, rng: random.Random) -> None:
    where, path = rng.choice(TRAVERSALS)

    def edit(p: dict[str, Any]) -> None:
        if where == "snapshot":
            p["snapshot"]["path"] = path
        elif where == "delta":
            p["deltas"][0]["path"] = path
        else:
            p["boxes"][_our_locator(s)]["path"] = path

    a.resign(edit)


def _bomb(kind: str) -> Attack:
    def attack(a: Attacker, s: Site, rng: random.Random) -> None:
        entry = a.add("snapshots", lambda sha: f"2.{sha}.ndjson.gz", s.bomb)
        # The signed uncompressed size: small (a lie the bomb guard catches at once), or
        # honest-looking and huge (then the 1 MiB line cap stops it).
        raw = rng.randint(100, 10_000) if kind == "small" else 64 << 20
        a.resign(lambda p: p.update(deltas=[], snapshot={**entry, "raw_length": raw}))

    return attack


@dataclass(frozen=True)
class SiteAttack:
    name: str
    attack: Attack
    expect: type[Exception] | None  # None: heals (the delta is refused, the snapshot used)
    match: str | None = None
    start: int = 1


SITE_ATTACKS = [
    SiteAttack("manifest signature forged", _flip_sig, SignatureError),
    SiteAttack("manifest signatures stripped", _strip, SignatureError, "no signatures"),
    SiteAttack("manifest payload altered after signing", _alter_payload, SignatureError),
    SiteAttack("manifest signed by keys not in root", _foreign_keys, SignatureError),
    SiteAttack(
        "manifest below the online threshold", _below_threshold, SignatureError, "1 valid signature"
    ),
    SiteAttack("manifest signed by the wrong role", _wrong_role, SignatureError, "another role"),
    SiteAttack("rollback to an older manifest", _rollback, RollbackError, "older", start=2),
    SiteAttack("other content under the same version", _same_version, RollbackError, "differs"),
    SiteAttack("freeze (genuine expired manifest)", _freeze, ExpiredError, "expired"),
    SiteAttack("mix-and-match artefact bytes", _mix_and_match, DigestMismatch),
    SiteAttack("endless artefact", _endless_artefact, TooLarge, "more than the signed"),
    SiteAttack("endless manifest", _endless_manifest, TooLarge, "cap"),
    SiteAttack("endless root", _endless_root, TooLarge, "cap"),
    SiteAttack("delta made for another base", _other_base, BaseVersionMismatch),
    SiteAttack(
        "bad state digest after a delta (snapshot heals)",
        lambda a, s, r: a.resign(lambda p: p.update(deltas=[_delta_without_revocation(a)])),
        None,
    ),
    SiteAttack(
        "bad state digest after delta and snapshot", _bad_delta_and_snapshot, DigestMismatch
    ),
    *[
        SiteAttack(f"root rotation: {k}", _root_attack(k), RootRotationError)
        for k in (
            "only new keys",
            "below the old threshold",
            "not signed by its own keys",
            "skips a version",
            "wrong version number",
        )
    ],
    SiteAttack(
        "restricted box sealed for another subscriber",
        _box_swap("other"),
        VerificationError,
        "does not open",
    ),
    SiteAttack(
        "restricted box of another version",
        _box_swap("another version's box"),
        VerificationError,
        "does not open",
    ),
    SiteAttack(
        "restricted box of another version (its own path)",
        _box_swap("another version's box, own path"),
        FormatError,
        "not allowed",
    ),
    SiteAttack("path traversal in artefact names", _traversal, FormatError, "not allowed"),
    SiteAttack("decompression bomb (small signed size)", _bomb("small"), TooLarge),
    SiteAttack("decompression bomb (large signed size)", _bomb("large"), FormatError),
]


@pytest.mark.parametrize("case", SITE_ATTACKS, ids=[c.name for c in SITE_ATTACKS])
def test_site_attack(case: SiteAttack, env: Env) -> None:
    tally = Tally(f"attack: {case.name}")
    rng = random.Random(case.name)
    for rep in range(REPS):
        with tally.run(f"rep {rep}"):
            _site_attack(env, case, rng)
    tally.finish()


def _site_attack(env: Env, case: SiteAttack, rng: random.Random) -> None:
    start = case.start
    client = env.reset(start)
    a = env.attacker
    a.install(env.site.versions[start + 1])
    case.attack(a, env.site, rng)
    bomb = "bomb" in case.name
    if bomb:
        tracemalloc.start()
    began = time.monotonic()
    try:
        if case.expect is None:
            result = client.sync()
            assert (result.mode, result.to_version) == ("snapshot", start + 1), result
            assert isinstance(result.delta_error, DigestMismatch), result.delta_error
            in_force(client, start + 1)
            return
        with pytest.raises(case.expect, match=case.match) as info:
            client.sync()
    finally:
        if bomb:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert peak < 48 << 20, f"the bomb took {peak >> 20} MiB"
            assert time.monotonic() - began < 20
    in_force(client, start)
    error = client.status().last_error
    assert error is not None and error.kind == type(info.value).__name__
    cached_roots = list(Path(client.status().cache_dir).glob("root/*.root.json"))
    assert not cached_roots, f"roots of an attack were persisted: {cached_roots}"
    # The genuine site comes back: the next sync heals.
    shutil.rmtree(env.served)
    shutil.copytree(env.site.versions[start + 1], env.served)
    client.sync()
    in_force(client, start + 1)
    assert client.status().last_error is None


# =========================================================================== cache attacks


def _db(cache: Path) -> Path:
    return cache / (cache / "CURRENT").read_text().strip()


def _tamper_record(cache: Path, rng: random.Random) -> str:
    """Swap the sealed lines of two public records, re-encoded with the file's own codec:
    a tamperer who knows the format (site format 2 records cannot be rewritten without the
    hash key, so moving genuine ciphertext between records is what is left). Each line
    still parses; only verify() and the records' own bindings can tell."""
    conn = sqlite3.connect(_db(cache))
    try:
        codec = _Codec()
        rows = conn.execute("SELECT rid, entry_id, body FROM records WHERE part = 0").fetchall()
        (ra, ea, ba), (rb, eb, bb) = rng.sample(rows, 2)
        line_a, line_b = codec.decode(ba, ea), codec.decode(bb, eb)
        assert line_a != line_b
        conn.execute("UPDATE records SET body = ? WHERE rid = ?", (codec.encode(line_b, ea), ra))
        conn.execute("UPDATE records SET body = ? WHERE rid = ?", (codec.encode(line_a, eb), rb))
        conn.commit()
    finally:
        conn.close()
    return "records swapped and re-encoded"


def _flip_body(cache: Path, rng: random.Random) -> str:
    conn = sqlite3.connect(_db(cache))
    try:
        rows = conn.execute("SELECT rid, body FROM records").fetchall()
        rid, body = rng.choice(rows)
        b = bytearray(body)
        b[rng.randrange(1, len(b))] ^= 1 << rng.randrange(8)
        conn.execute("UPDATE records SET body = ? WHERE rid = ?", (bytes(b), rid))
        conn.commit()
    finally:
        conn.close()
    return "record body byte flipped"


def _sql(statement: str) -> Callable[[Path, random.Random], str]:
    def tamper(cache: Path, rng: random.Random) -> str:
        conn = sqlite3.connect(_db(cache))
        try:
            conn.execute(statement)
            conn.commit()
        finally:
            conn.close()
        return statement

    return tamper


CACHE_TAMPERS: list[tuple[str, Callable[[Path, random.Random], str]]] = [
    ("two listed records' sealed lines swapped", _tamper_record),
    ("record body byte flipped", _flip_body),
    (
        "record deleted",
        _sql("DELETE FROM records WHERE rid = (SELECT rid FROM records WHERE part = 0 LIMIT 1)"),
    ),
    ("index row deleted", _sql("DELETE FROM keys WHERE k = (SELECT k FROM keys LIMIT 1)")),
    (
        "signed digest replaced",
        _sql("UPDATE meta SET v = '" + "0" * 64 + "' WHERE k = 'state_sha256'"),
    ),
    ("restricted record deleted", _sql("DELETE FROM records WHERE part = 1")),
]


def test_tampered_cache_files(env: Env) -> None:
    """A local user edits the list database: verify() finds every change."""
    tally = Tally("attack: tampered cache files")
    rng = random.Random(7)
    for rep in range(REPS):
        for name, tamper in CACHE_TAMPERS:
            with tally.run(f"{name} ({rep})"):
                client = env.reset(2)
                cache = Path(client.status().cache_dir)
                client.close()
                tamper(cache, rng)
                client = env.client(cache)
                with pytest.raises(StoreCorrupted):
                    client.verify()
                # Whatever a check says now, it never escapes as a foreign exception.
                for i in range(len(IDS)):
                    with contextlib.suppress(InterceptError):
                        client.check(Person(IDS[i]), MEASURE)
    tally.finish()


def _rechain(lines: list[bytes]) -> list[bytes]:
    """Recompute every hash after an edit: what a tamperer who knows the format but not
    the cache's audit.key does. The keyed chain (and the signed checkpoints) tell."""
    out, prev = [], "0" * 64
    for raw in lines:
        obj = json.loads(raw)
        obj.pop("h")
        obj["prev"] = prev
        body = _audit_dumps(obj)  # without audit.key only the unkeyed SHA-256 chain
        prev = hashlib.sha256(prev.encode() + body).hexdigest()
        out.append(body[:-1] + b',"h":"' + prev.encode() + b'"}\n')
    return out


def _audit_tampers() -> list[tuple[str, Callable[[list[bytes], random.Random], list[bytes]], Any]]:
    def pick(lines: list[bytes], rng: random.Random, what: bytes = b'"action"') -> int:
        records = [i for i, ln in enumerate(lines) if what in ln]
        return rng.choice(records[:-1])

    def edit(lines: list[bytes], rng: random.Random) -> list[bytes]:
        i = pick(lines, rng, b'"action":"block"')
        lines[i] = lines[i].replace(b'"action":"block"', b'"action":"allow"')
        return lines

    def delete(lines: list[bytes], rng: random.Random) -> list[bytes]:
        del lines[pick(lines, rng)]
        return lines

    def insert(lines: list[bytes], rng: random.Random) -> list[bytes]:
        i = pick(lines, rng)
        lines.insert(i, lines[i])
        return lines

    def garbage(lines: list[bytes], rng: random.Random) -> list[bytes]:
        lines.insert(pick(lines, rng), b"not an audit record\n")
        return lines

    def nested(lines: list[bytes], rng: random.Random) -> list[bytes]:
        lines.insert(pick(lines, rng), b"[" * 5000 + b"\n")
        return lines

    def rechained(lines: list[bytes], rng: random.Random) -> list[bytes]:
        return _rechain(edit(lines, rng))

    return [
        ("a decision edited (block -> allow)", edit, None),
        ("a decision deleted", delete, None),
        ("a decision inserted twice", insert, None),
        ("a garbage line inserted", garbage, None),
        ("a line of deeply nested JSON inserted", nested, None),
        ("edited and every hash recomputed", rechained, None),
    ]


def test_tampered_audit_log(env: Env) -> None:
    """The decision log is edited by someone who can write the cache: audit verify
    reports a problem (never raises, never passes); recomputed hashes are caught by the
    signed checkpoints."""
    tally = Tally("attack: tampered audit log")
    rng = random.Random(9)
    public = load_subscriber_key(env.site.subs[SUBSCRIBER]).report.public_key()
    for rep in range(REPS):
        for name, tamper, known in _audit_tampers():
            with tally.run(f"{name} ({rep})", known=known):
                client = env.reset(2)
                cache = Path(client.status().cache_dir)
                client.close()
                shutil.rmtree(cache / "audit", ignore_errors=True)
                logged = env.client(cache, audit=True)
                for _ in range(3):  # three flushed batches, each with a signed checkpoint
                    for i in range(len(IDS)):
                        logged.check(Person(IDS[i]), MEASURE)
                    logged._core.audit.flush()
                logged.close()
                (path,) = sorted((cache / "audit").glob("audit-*.jsonl"))
                assert verify_audit(cache / "audit", public_key=public).ok
                lines = path.read_bytes().splitlines(keepends=True)
                path.write_bytes(b"".join(tamper(lines, rng)))
                report = verify_audit(cache / "audit", public_key=public)
                assert not report.ok and report.problems, report
    tally.finish()


def test_cache_pointer_to_garbage(env: Env) -> None:
    """CURRENT names no database (or a path outside the cache): checks refuse to answer
    (never "allow"), and the next sync rebuilds a verified version."""
    tally = Tally("attack: cache pointer to a missing or foreign path")
    rng = random.Random(8)
    targets = [
        "list-9-0123456789abcdef.sqlite",
        "../../etc/passwd",
        "",
        "list-2-zz.sqlite",
        "/tmp/list-2-0123456789abcdef.sqlite",
    ]
    for rep in range(REPS * 2):
        with tally.run(f"rep {rep}"):
            client = env.reset(2)
            cache = Path(client.status().cache_dir)
            (cache / "CURRENT").write_text(rng.choice(targets) + "\n")
            time.sleep(0.06)  # the store re-reads CURRENT at most every 50 ms
            with pytest.raises(StoreCorrupted):
                client.check(Person(IDS[0]), MEASURE)
            client.sync()
            in_force(client, 2)
    tally.finish()


def _not_rolled_back(client: Client) -> None:
    """Checks refuse (StoreCorrupted) or answer from v3; never from the older version."""
    try:
        d = client.check(Person(IDS[4]), MEASURE)  # listed from v3 on
    except StoreCorrupted:
        pass
    else:
        assert (d.list_version, d.action) == (3, "block"), (
            f"a local rollback to version {d.list_version} went unnoticed: {d.action}"
        )
    with pytest.raises(StoreCorrupted):
        client.verify()


def test_cache_pointer_swapped_to_the_previous_version(env: Env) -> None:
    """CURRENT is pointed back at the previous version's database (still in the cache,
    genuinely signed): the running client and a restarted one must notice the local
    rollback, and the next sync must restore version 3."""
    tally = Tally("attack: cache pointer swapped to the previous version")
    for rep in range(REPS):
        with tally.run(f"rep {rep}"):
            client = env.reset(1)
            shutil.rmtree(env.served)
            shutil.copytree(env.site.versions[3], env.served)
            env.attacker.resign(lambda p: p.update(deltas=[]))  # a snapshot: v1's file stays
            client.sync()
            cache = Path(client.status().cache_dir)
            current = (cache / "CURRENT").read_text().strip()
            older = [
                n for n in os.listdir(cache) if n.startswith("list-1-") and n.endswith(".sqlite")
            ]
            assert older and older[0] != current
            (cache / "CURRENT").write_text(older[0] + "\n")
            time.sleep(0.06)  # the store re-reads CURRENT at most every 50 ms
            _not_rolled_back(client)
            client.close()
            restarted = env.client(cache)
            _not_rolled_back(restarted)
            restarted.sync()
            d = restarted.check(Person(IDS[4]), MEASURE)
            assert (d.list_version, d.action) == (3, "block")
            assert restarted.verify().version == 3
    tally.finish()


def test_cache_pointer_swapped_to_a_foreign_database(env: Env, tmp_path: Path) -> None:
    """A database from another platform's cache, at the very same version number, is
    copied in and CURRENT pointed at it (its manifest is genuinely signed, by other
    keys): checks must not answer from it, and verify() must fail."""
    tally = Tally("attack: cache pointer swapped to another platform's database")
    other = TestPlatform(tmp_path / "other-platform", subscriber_id=SUBSCRIBER)
    other.add_person(IDS[5], publish=False)
    other.publish()
    other.add_person(publish=False)
    other.publish()  # version 2, listing IDS[5] (allowed in our list)
    foreign_cache = tmp_path / "foreign-cache"
    other.client(cache_dir=foreign_cache, audit=False).close()
    foreign = (foreign_cache / "CURRENT").read_text().strip()
    assert foreign.startswith("list-2-")

    def refuses(c: Client) -> None:
        try:
            d = c.check(Person(IDS[5]), MEASURE)
        except InterceptError:
            pass
        else:
            assert d.action == "allow", "answered from another platform's list"
        with pytest.raises(InterceptError):
            c.verify()

    for rep in range(REPS):
        client = env.reset(2)
        cache = Path(client.status().cache_dir)
        in_force(client, 2)
        shutil.copyfile(foreign_cache / foreign, cache / foreign)
        (cache / "CURRENT").write_text(foreign + "\n")
        time.sleep(0.06)
        with tally.run(f"running client {rep}"):
            refuses(client)
        with tally.run(f"restarted client {rep}"):
            refuses(env.client(cache))
    other.close()
    tally.finish()


def test_replaced_trust_root_in_the_cache(env: Env) -> None:
    """A local user plants a root of their own in the cache's root directory and serves
    manifests signed by its online key: the restarted client verifies from the pinned
    root, discards the planted file, and rejects the manifest."""
    tally = Tally("attack: replaced trust root file in the cache")
    for rep in range(REPS):
        with tally.run(f"rep {rep}"):
            client = env.reset(1)
            cache = Path(client.status().cache_dir)
            client.close()
            attacker_root = [SigningKey.generate() for _ in range(2)]
            attacker_online = [SigningKey.generate()]
            planted = forged_root(2, attacker_root, attacker_root, attacker_online)
            atomic_write(cache / "root" / "2.root.json", planted)
            env.attacker.install(env.site.versions[2])
            payload = env.attacker.payload()
            payload["root_version"] = 2
            env.attacker.sign(payload, attacker_online)
            client = env.client(cache)
            assert not (cache / "root" / "2.root.json").exists(), "the planted root was kept"
            with pytest.raises(SignatureError):
                client.sync()
            in_force(client, 1)
    tally.finish()


# =========================================================================== report forgery


def _post(url: str, reports: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(url + "/reports", json={"reports": reports}, timeout=10)


def _report(key: SigningKey, subscriber: str, **fields: Any) -> dict[str, Any]:
    payload = {
        "type": "report",
        "report_id": os.urandom(16).hex(),
        "subscriber_id": subscriber,
        "kind": "interception",
        "created_at": format_utc(utcnow()),
        "measure": MEASURE,
        "entry_id": "E00000",
        "case_no": "(2024)冀0203执1号",
        "list_version": 1,
        "outcome": "blocked",
        "details": {},
        **fields,
    }
    out: dict[str, Any] = json.loads(
        sign_envelope(REPORT_TYPE, canonical_json(payload), [key]).to_bytes()
    )
    return out


def test_report_forgery(site: Site, tmp_path: Path) -> None:
    """Forged reports are refused as a whole batch and never stored; replays are
    answered as duplicates and stored once; a report id cannot be taken over."""
    tally = Tally("attack: report forgery against the reference platform")
    state = tmp_path / "platform-state"
    ours = SigningKey(load_subscriber_key(site.subs[SUBSCRIBER]).report)
    theirs = SigningKey(load_subscriber_key(site.subs[OTHER]).report)
    stranger = SigningKey.generate()
    genuine: set[str] = set()
    taken: set[str] = set()  # report ids a second unit also used (its own report)
    with PlatformServer(
        site.versions[1],
        subscribers_dir=site.keys / "subscribers",
        state_dir=state,
        limits=Limits(poll_interval=1),
    ) as server:
        url = server.url

        def refused(batch: list[dict[str, Any]], status: int) -> None:
            before = platform_report_rows(state)
            r = _post(url, batch)
            assert r.status_code == status, (r.status_code, r.text)
            assert platform_report_rows(state) == before, "a refused batch was stored"

        for rep in range(REPS):
            with tally.run(f"unregistered key ({rep})"):
                refused([_report(stranger, SUBSCRIBER)], 403)
            with tally.run(f"another unit's key under our id ({rep})"):
                refused([_report(theirs, SUBSCRIBER)], 403)
            with tally.run(f"payload swapped after signing ({rep})"):
                r = _report(ours, SUBSCRIBER)
                other = json.loads(base64.b64decode(r["payload"]))
                other["outcome"] = "not_enforced"
                r["payload"] = base64.b64encode(canonical_json(other)).decode()
                refused([r], 403)
            with tally.run(f"signature under another payload type ({rep})"):
                r = _report(ours, SUBSCRIBER)
                env = sign_envelope(MANIFEST_TYPE, base64.b64decode(r["payload"]), [ours])
                refused([json.loads(env.to_bytes())], 400)
            with tally.run(f"one forgery in a genuine batch ({rep})"):
                refused(
                    [
                        _report(ours, SUBSCRIBER),
                        _report(stranger, SUBSCRIBER),
                        _report(ours, SUBSCRIBER),
                    ],
                    403,
                )
            with tally.run(f"replay of a genuine report ({rep})"):
                r = _report(ours, SUBSCRIBER)
                first = _post(url, [r]).json()
                again = _post(url, [r]).json()
                rid = json.loads(base64.b64decode(r["payload"]))["report_id"]
                assert first == {"accepted": [rid], "duplicates": []}, first
                assert again == {"accepted": [], "duplicates": [rid]}, again
                genuine.add(rid)
            with tally.run(f"report id taken over by another unit ({rep})"):
                r = _report(ours, SUBSCRIBER)
                rid = json.loads(base64.b64decode(r["payload"]))["report_id"]
                assert _post(url, [r]).status_code == 200
                genuine.add(rid)
                hijack = _report(theirs, OTHER, report_id=rid, outcome="not_enforced")
                # Reports are identified by (subscriber, report_id) (issue 16): the other
                # unit's copy is its own report; ours is untouched.
                assert _post(url, [hijack]).json()["accepted"] == [rid]
                conn = sqlite3.connect(state / "reports.sqlite")
                try:
                    owners = conn.execute(
                        "SELECT subscriber_id, envelope FROM reports WHERE report_id = ?", (rid,)
                    ).fetchall()
                finally:
                    conn.close()
                ours_row = [env for sid, env in owners if sid == SUBSCRIBER]
                assert ours_row == [canonical_json(r)]
                taken.add(rid)
        with tally.run("only genuine reports stored, once each"):
            stored = platform_report_rows(state)
            assert set(stored) == genuine
            assert len(stored) == len(genuine) + len(taken)
    tally.finish()
