"""The pure verifier (:mod:`intercept_sdk._client.trust`): one test per attack, real Ed25519.

Every test builds real signed roots and manifests in memory, offers the attack to a
:class:`TrustedState` that already trusts something, and asserts both the specific
exception and that the trusted state is exactly what it was before (the module's promise:
accept completely or change nothing). No I/O: the clock is injected.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from intercept_sdk._client.trust import Artefact, ArtefactCheck, TrustedState
from intercept_sdk._exceptions import (
    BaseVersionMismatch,
    DigestMismatch,
    ExpiredError,
    FormatError,
    RollbackError,
    RootRotationError,
    SignatureError,
    TooLarge,
    TrustRootError,
)
from intercept_sdk._platform.keys import build_root_payload, sign_root
from intercept_sdk._protocol.sealing import WorkFactor
from intercept_sdk._protocol.signing import (
    MANIFEST_TYPE,
    ROOT_TYPE,
    Envelope,
    SigningKey,
    canonical_json,
    sign_envelope,
)
from intercept_sdk._util import format_utc

NOW = dt.datetime(2026, 11, 22, 8, 0, tzinfo=dt.timezone.utc)
SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()
LOCATOR = "0123456789abcdef" * 2  # an opaque box locator (32 lower-case hex digits)


def _keys(n: int) -> list[SigningKey]:
    return [SigningKey.generate() for _ in range(n)]


@dataclass
class World:
    """A platform's keys: root role 2-of-3, online role 2-of-2 (so thresholds matter)."""

    root: list[SigningKey] = field(default_factory=lambda: _keys(3))
    online: list[SigningKey] = field(default_factory=lambda: _keys(2))
    root_threshold: int = 2
    online_threshold: int = 2

    def root_bytes(
        self,
        version: int = 1,
        *,
        signers: Sequence[SigningKey] | None = None,
        root: Sequence[SigningKey] | None = None,
        online: Sequence[SigningKey] | None = None,
        expires: dt.datetime = NOW + dt.timedelta(days=365),
    ) -> bytes:
        payload = build_root_payload(
            version=version,
            expires=format_utc(expires),
            root_keys=list(root if root is not None else self.root),
            root_threshold=self.root_threshold,
            online_keys=list(online if online is not None else self.online),
            online_threshold=self.online_threshold,
        )
        return sign_root(payload, list(signers if signers is not None else self.root))

    def manifest_payload(self, version: int, **over: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "type": "manifest",
            "spec": 2,
            "version": version,
            "root_version": 1,
            "published_at": format_utc(NOW - dt.timedelta(hours=1)),
            "expires": format_utc(NOW + dt.timedelta(days=1)),
            "key_epoch": 1,
            "kdf": {"alg": "hmac"},
            "state": {"entries": 3, "sha256": SHA_A, "sum": SHA_B},
            "snapshot": {
                "path": f"snapshots/{version}.{SHA_A}.ndjson.gz",
                "sha256": SHA_A,
                "length": 10,
                "raw_length": 30,
            },
            "deltas": [],
            "boxes": {
                LOCATOR: {
                    "path": f"boxes/{version}/{LOCATOR}.{SHA_B}.box",
                    "sha256": SHA_B,
                    "length": 4096,
                }
            },
        }
        payload.update(over)
        return payload

    def manifest(
        self,
        version: int,
        *,
        signers: Iterable[SigningKey] | None = None,
        **over: Any,
    ) -> bytes:
        payload = self.manifest_payload(version, **over)
        keys = list(signers if signers is not None else self.online)
        return sign_envelope(MANIFEST_TYPE, canonical_json(payload), keys).to_bytes()


@pytest.fixture
def world() -> World:
    return World()


def trusted_at(world: World, version: int | None = 5) -> TrustedState:
    """A TrustedState pinned to root 1 that already trusts manifest ``version``."""
    state = TrustedState(world.root_bytes(), clock=lambda: NOW)
    if version is not None:
        state.update_manifest(world.manifest(version))
    return state


def snapshot_of(state: TrustedState) -> tuple[Any, ...]:
    """What must not change when an update is refused."""
    m = state.manifest
    return (state.root.version, state.root.raw, None if m is None else m.raw)


def _tamper_sig(data: bytes) -> bytes:
    """Flip one bit in every signature of an envelope (the payload is untouched)."""
    obj = json.loads(data)
    for s in obj["signatures"]:
        sig = bytearray(base64.b64decode(s["sig"]))
        sig[0] ^= 0x01
        s["sig"] = base64.b64encode(bytes(sig)).decode()
    return json.dumps(obj).encode()


# --------------------------------------------------------------------- baseline


def test_valid_manifest_is_accepted_and_kept_as_received(world: World) -> None:
    state = trusted_at(world, None)
    data = world.manifest(1)
    manifest = state.update_manifest(data)
    assert manifest.version == 1
    assert state.manifest is manifest
    assert manifest.raw == data  # persisted as received, never re-serialised
    assert manifest.snapshot == Artefact(f"snapshots/1.{SHA_A}.ndjson.gz", SHA_A, 10, 30)
    assert manifest.key_epoch == 1
    assert manifest.work == WorkFactor()
    assert manifest.boxes == {LOCATOR: Artefact(f"boxes/1/{LOCATOR}.{SHA_B}.box", SHA_B, 4096)}


def test_scrypt_work_factor_is_read_from_the_signed_manifest(world: World) -> None:
    state = trusted_at(world, None)
    kdf = {"alg": "scrypt", "log2_n": 12, "r": 8, "p": 1}
    manifest = state.update_manifest(world.manifest(1, kdf=kdf))
    assert manifest.work == WorkFactor("scrypt", 12, 8, 1)


def test_a_format_1_manifest_is_refused_with_a_republish_message(world: World) -> None:
    """A validly signed site-format-1 manifest (public hash key) is never accepted."""
    state = trusted_at(world)
    before = snapshot_of(state)
    payload = world.manifest_payload(6, spec=1, hash_key="11" * 32, restricted={})
    for name in ("key_epoch", "kdf", "boxes"):
        del payload[name]
    data = sign_envelope(MANIFEST_TYPE, canonical_json(payload), world.online).to_bytes()
    with pytest.raises(FormatError, match="republish in site format 2"):
        state.update_manifest(data)
    assert snapshot_of(state) == before


def test_same_manifest_again_changes_nothing(world: World) -> None:
    """The manifest already trusted, fetched again (no ETag support): accepted as is."""
    state = trusted_at(world, None)
    data = world.manifest(7)
    state.update_manifest(data)
    assert state.update_manifest(data).version == 7
    assert state.manifest is not None and state.manifest.raw == data


# --------------------------------------------------------------------- signatures


def test_forged_signature_is_rejected(world: World) -> None:
    state = trusted_at(world)
    before = snapshot_of(state)
    with pytest.raises(SignatureError, match="0 valid signature"):
        state.update_manifest(_tamper_sig(world.manifest(6)))
    assert snapshot_of(state) == before


def test_missing_signatures_are_rejected(world: World) -> None:
    state = trusted_at(world)
    before = snapshot_of(state)
    obj = json.loads(world.manifest(6))
    obj["signatures"] = []
    with pytest.raises(SignatureError, match="no signatures"):
        state.update_manifest(json.dumps(obj).encode())
    assert snapshot_of(state) == before


def test_signature_by_a_key_not_in_root_is_rejected(world: World) -> None:
    state = trusted_at(world)
    before = snapshot_of(state)
    outsiders = _keys(2)
    with pytest.raises(SignatureError, match="0 valid signature"):
        state.update_manifest(world.manifest(6, signers=outsiders))
    assert snapshot_of(state) == before


def test_below_threshold_is_rejected(world: World) -> None:
    state = trusted_at(world)
    before = snapshot_of(state)
    with pytest.raises(SignatureError, match=r"1 valid signature.*threshold is 2"):
        state.update_manifest(world.manifest(6, signers=world.online[:1]))
    # The same key twice is still one signer.
    twice = [world.online[0], world.online[0]]
    with pytest.raises(SignatureError, match="1 valid signature"):
        state.update_manifest(world.manifest(6, signers=twice))
    assert snapshot_of(state) == before


def test_wrong_roles_key_is_rejected(world: World) -> None:
    """Root keys (offline) cannot sign a manifest, however many of them sign."""
    state = trusted_at(world)
    before = snapshot_of(state)
    with pytest.raises(SignatureError, match="another role's key"):
        state.update_manifest(world.manifest(6, signers=world.root))
    assert snapshot_of(state) == before


def test_a_signature_made_for_another_type_does_not_verify(world: World) -> None:
    """The payload type is inside what is signed (DSSE PAE): an online signature made over
    the same payload as another type cannot be relabelled into a manifest signature."""
    state = trusted_at(world)
    payload = canonical_json(world.manifest_payload(6))
    as_root = sign_envelope(ROOT_TYPE, payload, world.online)
    with pytest.raises(SignatureError, match="payload type"):
        state.update_manifest(as_root.to_bytes())
    relabelled = Envelope(MANIFEST_TYPE, payload, as_root.signatures).to_bytes()
    with pytest.raises(SignatureError, match="0 valid signature"):
        state.update_manifest(relabelled)
    assert state.manifest is not None and state.manifest.version == 5


def test_signatures_cover_the_exact_payload_bytes(world: World) -> None:
    """Re-serialising the payload (same JSON, other spacing) invalidates the signature;
    the envelope's own layout does not matter, and the bytes are kept as received."""
    state = trusted_at(world)
    env = Envelope.from_bytes(world.manifest(6))
    spaced = json.dumps(json.loads(env.payload), indent=1).encode()
    reserialised = Envelope(MANIFEST_TYPE, spaced, env.signatures).to_bytes()
    with pytest.raises(SignatureError):
        state.update_manifest(reserialised)
    obj = json.loads(world.manifest(6))
    pretty = json.dumps(obj, indent=4).encode()  # the envelope re-laid out: still valid
    assert state.update_manifest(pretty).raw == pretty


def test_pinned_root_must_meet_its_own_threshold(world: World) -> None:
    with pytest.raises(SignatureError, match="trust root"):
        TrustedState(world.root_bytes(signers=world.root[:1]), clock=lambda: NOW)
    with pytest.raises(FormatError):
        TrustedState(b"not json", clock=lambda: NOW)


# --------------------------------------------------------------------- rollback / freeze


def test_rollback_to_an_older_version_is_rejected(world: World) -> None:
    state = trusted_at(world, 5)
    before = snapshot_of(state)
    with pytest.raises(RollbackError, match="older than trusted 5"):
        state.update_manifest(world.manifest(4))
    assert snapshot_of(state) == before


def test_other_content_under_the_trusted_version_is_rejected(world: World) -> None:
    state = trusted_at(world, 5)
    before = snapshot_of(state)
    other = world.manifest(5, key_epoch=2)
    with pytest.raises(RollbackError, match="differs from the trusted manifest"):
        state.update_manifest(other)
    assert snapshot_of(state) == before


def test_rollback_floor_applies_without_a_trusted_manifest(world: World) -> None:
    """The local list's version bounds rollback even when its manifest cannot be used."""
    state = trusted_at(world, None)
    with pytest.raises(RollbackError, match="older than the local version 5"):
        state.update_manifest(world.manifest(4), floor=5)
    assert state.manifest is None
    assert state.update_manifest(world.manifest(5), floor=5).version == 5


def test_freeze_expired_manifest_is_rejected(world: World) -> None:
    state = trusted_at(world, 5)
    before = snapshot_of(state)
    stale = world.manifest(6, expires=format_utc(NOW - dt.timedelta(seconds=1)))
    with pytest.raises(ExpiredError, match="manifest 6 expired"):
        state.update_manifest(stale)
    at_expiry = world.manifest(6, expires=format_utc(NOW))
    with pytest.raises(ExpiredError):
        state.update_manifest(at_expiry)  # expiry is exclusive
    assert snapshot_of(state) == before


def test_freeze_expired_trusted_root_is_rejected(world: World) -> None:
    state = TrustedState(world.root_bytes(expires=NOW - dt.timedelta(days=1)), clock=lambda: NOW)
    with pytest.raises(ExpiredError, match="trusted root 1 expired"):
        state.update_manifest(world.manifest(1))
    assert state.manifest is None


def test_cached_manifest_reloads_even_when_expired(world: World) -> None:
    """At start-up the last verified manifest is re-verified (signatures) but an expired
    one stays loaded: it is still the newest list, which the client reports as stale."""
    state = trusted_at(world, None)
    old = world.manifest(3, expires=format_utc(NOW - dt.timedelta(days=3)))
    assert state.load_trusted_manifest(old).version == 3
    with pytest.raises(ExpiredError):
        state.check_not_expired()
    with pytest.raises(SignatureError):
        state.load_trusted_manifest(_tamper_sig(old))


# --------------------------------------------------------------------- artefacts


def test_mix_and_match_wrong_hash_is_rejected() -> None:
    art = Artefact("snapshots/1.x.ndjson.gz", hashlib.sha256(b"genuine!").hexdigest(), 8)
    with pytest.raises(DigestMismatch, match="SHA-256 differs"):
        TrustedState.verify_artefact(art, b"forgery!")
    check = ArtefactCheck(art)
    check.update(b"genu")
    check.update(b"ine!")
    check.finish()  # the genuine bytes, in pieces, pass


def test_mix_and_match_short_body_is_rejected() -> None:
    art = Artefact("snapshots/1.x.ndjson.gz", hashlib.sha256(b"genuine!").hexdigest(), 8)
    with pytest.raises(DigestMismatch, match="7 bytes, signed length is 8"):
        TrustedState.verify_artefact(art, b"genuine")


def test_endless_data_is_cut_at_the_signed_length() -> None:
    art = Artefact("snapshots/1.x.ndjson.gz", hashlib.sha256(b"12345678").hexdigest(), 8)
    check = ArtefactCheck(art)
    check.update(b"12345678")  # exactly the signed length is fine
    with pytest.raises(TooLarge, match="more than the signed 8 bytes"):
        check.update(b"9")
    with pytest.raises(TooLarge):
        TrustedState.verify_artefact(art, b"123456789")


def test_artefact_paths_stay_in_their_directory(world: World) -> None:
    state = trusted_at(world)
    bad_paths: list[dict[str, Any]] = [
        {"snapshot": {"path": f"deltas/1-2.{SHA_A}.ndjson.gz", "sha256": SHA_A, "length": 1}},
        {"snapshot": {"path": "snapshots/../manifest.json", "sha256": SHA_A, "length": 1}},
        {"snapshot": {"path": "/etc/passwd", "sha256": SHA_A, "length": 1}},
        {"deltas": [{"from": 1, "path": f"snapshots/1.{SHA_A}.gz", "sha256": SHA_A, "length": 1}]},
        # a box must lie under boxes/<this version>/<its own locator>.
        {
            "boxes": {
                LOCATOR: {"path": f"boxes/5/{LOCATOR}.{SHA_A}.box", "sha256": SHA_A, "length": 1}
            }
        },
        {
            "boxes": {
                LOCATOR: {"path": f"boxes/6/{'f' * 32}.{SHA_A}.box", "sha256": SHA_A, "length": 1}
            }
        },
        {
            "boxes": {
                LOCATOR: {"path": f"snapshots/6.{SHA_A}.ndjson.gz", "sha256": SHA_A, "length": 1}
            }
        },
    ]
    before = snapshot_of(state)
    for over in bad_paths:
        with pytest.raises(FormatError, match="not allowed"):
            state.update_manifest(world.manifest(6, **over))
    assert snapshot_of(state) == before


def test_malformed_signed_content_is_a_format_error(world: World) -> None:
    state = trusted_at(world)
    for over in (
        {"version": "6"},
        {"version": True},
        {"expires": "tomorrow"},
        {"key_epoch": 0},
        {"key_epoch": "1"},
        {"kdf": {"alg": "scrypt", "log2_n": 30, "r": 8, "p": 1}},
        {"kdf": {"alg": "hmac", "extra": 1}},
        {
            "boxes": {
                "HOTEL-1": {"path": f"boxes/6/HOTEL-1.{SHA_A}.box", "sha256": SHA_A, "length": 1}
            }
        },
        {
            "boxes": {
                LOCATOR: {
                    "path": f"boxes/6/{LOCATOR}.{SHA_A}.box",
                    "sha256": SHA_A,
                    "length": (64 << 20) + 1,
                }
            }
        },
        {"deltas": [{"from": 6, "path": f"deltas/6-6.{SHA_A}.ndjson.gz", "sha256": SHA_A}]},
        {"type": "root"},
        {"spec": 3},
    ):
        payload = {**world.manifest_payload(6), **over}
        data = sign_envelope(MANIFEST_TYPE, canonical_json(payload), world.online).to_bytes()
        with pytest.raises(FormatError):
            state.update_manifest(data)
    assert state.manifest is not None and state.manifest.version == 5


# --------------------------------------------------------------------- deltas


def _delta(frm: int, path_from: int, path_to: int) -> dict[str, Any]:
    return {
        "from": frm,
        "path": f"deltas/{path_from}-{path_to}.{SHA_A}.ndjson.gz",
        "sha256": SHA_A,
        "length": 5,
        "raw_length": 9,
    }


def test_delta_made_for_another_base_is_refused(world: World) -> None:
    """A delta listed under base 1 that was made for 2->3 must never touch version 1."""
    state = trusted_at(world, None)
    manifest = state.update_manifest(world.manifest(3, deltas=[_delta(1, 2, 3), _delta(2, 2, 3)]))
    with pytest.raises(BaseVersionMismatch, match="made for 2->3"):
        manifest.delta_from(1)
    assert manifest.delta_from(2) == Artefact(f"deltas/2-3.{SHA_A}.ndjson.gz", SHA_A, 5, 9)


def test_delta_for_another_target_is_refused(world: World) -> None:
    state = trusted_at(world, None)
    manifest = state.update_manifest(world.manifest(3, deltas=[_delta(2, 2, 4)]))
    with pytest.raises(BaseVersionMismatch, match="made for 2->4"):
        manifest.delta_from(2)


def test_no_delta_from_the_local_version_means_snapshot(world: World) -> None:
    state = trusted_at(world, None)
    manifest = state.update_manifest(world.manifest(3, deltas=[_delta(2, 2, 3)]))
    assert manifest.delta_from(1) is None


def test_unnamed_delta_is_refused(world: World) -> None:
    state = trusted_at(world, None)
    odd = {"from": 2, "path": "deltas/whatever.gz", "sha256": SHA_A, "length": 5}
    manifest = state.update_manifest(world.manifest(3, deltas=[odd]))
    with pytest.raises(BaseVersionMismatch, match="does not name its base"):
        manifest.delta_from(2)


# --------------------------------------------------------------------- roots


def test_root_rotation_signed_by_both_thresholds_is_accepted(world: World) -> None:
    state = trusted_at(world, 5)
    new_root, new_online = _keys(3), _keys(2)
    data = world.root_bytes(
        2, signers=world.root[:2] + new_root[:2], root=new_root, online=new_online
    )
    accepted = state.update_root(data)
    assert (accepted.version, state.root.raw) == (2, data)
    # The new online keys now sign manifests; the old ones no longer do.
    with pytest.raises(SignatureError):
        state.update_manifest(world.manifest(6, root_version=2))
    assert state.update_manifest(world.manifest(6, root_version=2, signers=new_online))


def test_stored_manifest_stays_valid_under_the_root_it_was_accepted_with(
    world: World,
) -> None:
    """After a rotation of the online keys the stored manifest (signed by the old key
    under root 1) still re-verifies; a *new* manifest by the old key does not, and a
    stored one claiming the new root while signed by the old key does not either."""
    state = trusted_at(world, 5)
    stored = state.manifest
    assert stored is not None
    new_online = _keys(2)
    state.update_root(world.root_bytes(2, online=new_online))
    assert state.load_trusted_manifest(stored.raw).version == 5
    with pytest.raises(SignatureError):
        state.update_manifest(world.manifest(6))
    with pytest.raises(SignatureError):
        state.update_manifest(world.manifest(6, root_version=2))
    claims_root_2 = world.manifest(5, root_version=2)  # old keys, new root named
    with pytest.raises(RootRotationError, match="needs root 2, trusted root is 1"):
        state.load_trusted_manifest(claims_root_2)
    with pytest.raises(SignatureError):
        state.load_trusted_manifest(_tamper_sig(stored.raw))
    assert state.update_manifest(world.manifest(6, root_version=2, signers=new_online))


def test_root_rotation_without_the_old_threshold_is_rejected(world: World) -> None:
    state = trusted_at(world)
    before = snapshot_of(state)
    new_root = _keys(3)
    only_new = world.root_bytes(2, signers=new_root, root=new_root)
    with pytest.raises(RootRotationError, match="trusted root's threshold"):
        state.update_root(only_new)
    one_old = world.root_bytes(2, signers=world.root[:1] + new_root, root=new_root)
    with pytest.raises(RootRotationError, match="trusted root's threshold"):
        state.update_root(one_old)
    assert snapshot_of(state) == before


def test_root_rotation_without_the_new_threshold_is_rejected(world: World) -> None:
    state = trusted_at(world)
    before = snapshot_of(state)
    new_root = _keys(3)
    only_old = world.root_bytes(2, signers=world.root, root=new_root)
    with pytest.raises(RootRotationError, match="new root's own threshold"):
        state.update_root(only_old)
    assert snapshot_of(state) == before


def test_root_rotation_skipping_a_version_is_rejected(world: World) -> None:
    state = trusted_at(world)
    before = snapshot_of(state)
    with pytest.raises(RootRotationError, match="root version 3 does not follow trusted version 1"):
        state.update_root(world.root_bytes(3))
    with pytest.raises(RootRotationError, match="root version 1 does not follow"):
        state.update_root(world.root_bytes(1))  # a replay of the current root
    assert snapshot_of(state) == before


def test_root_walk_is_one_version_at_a_time(world: World) -> None:
    state = trusted_at(world, None)
    r2, r3 = _keys(3), _keys(3)
    state.update_root(world.root_bytes(2, signers=world.root + r2, root=r2))
    state.update_root(world.root_bytes(3, signers=r2 + r3, root=r3))
    assert state.root.version == 3
    # Root 1's keys mean nothing to root 3: they cannot take the root role back.
    with pytest.raises(RootRotationError, match="trusted root's threshold"):
        state.update_root(world.root_bytes(4, signers=world.root, root=world.root))
    assert state.root.version == 3


def test_manifest_needing_a_newer_root_is_refused(world: World) -> None:
    state = trusted_at(world)
    before = snapshot_of(state)
    with pytest.raises(RootRotationError, match="needs root 2, trusted root is 1"):
        state.update_manifest(world.manifest(6, root_version=2))
    assert snapshot_of(state) == before


def test_a_root_from_the_writable_cache_must_chain_to_the_pinned_one(world: World) -> None:
    """An attacker who can write the cache plants a root of their own: never trusted."""
    state = trusted_at(world)
    before = snapshot_of(state)
    attacker = _keys(3)
    planted = World(root=attacker).root_bytes(2, signers=attacker, root=attacker)
    with pytest.raises(TrustRootError, match="does not chain to the pinned root") as info:
        state.load_cached_root(planted)
    assert isinstance(info.value.__cause__, RootRotationError)
    assert snapshot_of(state) == before
    genuine = world.root_bytes(2)
    assert state.load_cached_root(genuine).version == 2
