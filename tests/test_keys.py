"""Key directory and root metadata: keygen, rotation, signing thresholds."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from intercept_sdk._exceptions import ConfigurationError, FormatError
from intercept_sdk._platform.keys import (
    KeyDir,
    add_subscriber,
    build_root_payload,
    keygen,
    role_keys,
    rotate_root,
    sign_root,
)
from intercept_sdk._protocol.signing import ROOT_TYPE, Envelope, SigningKey

NOW = dt.datetime(2026, 11, 22, 8, 0, tzinfo=dt.timezone.utc)


def _role(payload: dict[str, Any], role: str) -> tuple[dict[str, Any], int]:
    return role_keys(payload, role)


def _root(path: Path) -> tuple[Envelope, dict[str, Any]]:
    env = Envelope.from_bytes(path.read_bytes())
    return env, env.payload_json()


def _signed_by(env: Envelope, payload: dict[str, Any]) -> tuple[int, int]:
    keys, threshold = _role(payload, "root")
    return len(env.valid_keyids(keys)), threshold


def test_keygen_layout_and_root_v1(tmp_path: Path) -> None:
    kd_path = tmp_path / "keys"
    root_json = keygen(kd_path, signers=3, threshold=2, online_signers=2, now=NOW)
    assert root_json == kd_path / "root.json"
    assert stat.S_IMODE(kd_path.stat().st_mode) == 0o700
    for name in ["root-1.pem", "root-2.pem", "root-3.pem", "online-1.pem", "online-2.pem"]:
        assert stat.S_IMODE((kd_path / name).stat().st_mode) == 0o600
        assert (kd_path / name).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert (kd_path / "root" / "1.root.json").read_bytes() == root_json.read_bytes()

    env, payload = _root(root_json)
    assert env.payload_type == ROOT_TYPE
    assert payload["type"] == "root"
    assert payload["spec"] == 1
    assert payload["version"] == 1
    assert payload["expires"] == "2027-11-22T08:00:00Z"
    assert payload["roles"]["root"]["threshold"] == 2
    assert len(payload["roles"]["root"]["keyids"]) == 3
    assert payload["roles"]["online"]["threshold"] == 1
    assert len(payload["roles"]["online"]["keyids"]) == 2
    for info in payload["keys"].values():
        assert info["keytype"] == "ed25519"
        assert len(bytes.fromhex(info["public"])) == 32
    # Payload bytes are canonical JSON.
    assert (
        env.payload
        == json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
    )
    good, threshold = _signed_by(env, payload)
    assert good == 3 >= threshold

    kd = KeyDir(kd_path)
    assert kd.root_version == 1
    assert len(kd.root_keys()) == 3
    assert {k.keyid for k in kd.online_keys()} == set(payload["roles"]["online"]["keyids"])
    # site format 2: no long-lived hash key (one per key epoch, in the publisher state)
    assert not (kd_path / "hash_key.bin").exists()
    # No stray temporary directories next to it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys"]


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    kd_path = tmp_path / "keys"
    keygen(kd_path, now=NOW)
    before = (kd_path / "root-1.pem").read_bytes()
    with pytest.raises(ConfigurationError, match="refusing to overwrite"):
        keygen(kd_path, now=NOW)
    assert (kd_path / "root-1.pem").read_bytes() == before
    # A non-empty unrelated directory is refused too; an empty one is used.
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_text("x")
    with pytest.raises(ConfigurationError):
        keygen(other, now=NOW)
    empty = tmp_path / "empty"
    empty.mkdir()
    keygen(empty, now=NOW)
    assert KeyDir(empty).root_version == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"signers": 0}, "at least 1"),
        ({"signers": 2, "threshold": 3}, "threshold"),
        ({"threshold": 0}, "threshold"),
        ({"online_signers": 1, "online_threshold": 2}, "threshold"),
        ({"root_expires": 0}, "positive"),
    ],
)
def test_keygen_rejects_bad_parameters(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        keygen(tmp_path / "keys", now=NOW, **kwargs)
    assert not (tmp_path / "keys").exists()


def test_not_a_key_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="keygen"):
        KeyDir(tmp_path)


def test_root_rotation_across_three_versions(tmp_path: Path) -> None:
    kd_path = tmp_path / "keys"
    keygen(kd_path, signers=3, threshold=2, now=NOW)
    v1_online = {k.keyid for k in KeyDir(kd_path).online_keys()}

    # v2: entirely new root keys (2-of-4), online keys unchanged.
    assert rotate_root(kd_path, new_root_signers=4, new_threshold=3, now=NOW) == 2
    # v3: online keys rotated, root keys unchanged, threshold unchanged.
    assert rotate_root(kd_path, rotate_online=True, now=NOW) == 3
    # v4: only renews the expiry.
    later = NOW + dt.timedelta(days=10)
    assert rotate_root(kd_path, expires=30 * 86400, now=later) == 4

    kd = KeyDir(kd_path)
    assert kd.root_version == 4
    assert sorted(kd.root_files()) == [1, 2, 3, 4]
    roots = [_root(kd.root_files()[n]) for n in (1, 2, 3, 4)]
    assert (kd_path / "root.json").read_bytes() == kd.root_files()[4].read_bytes()
    for n in range(1, 4):
        env_next, next_payload = roots[n]
        _, prev_payload = roots[n - 1]
        assert next_payload["version"] == prev_payload["version"] + 1
        good_old, t_old = _signed_by(env_next, prev_payload)
        good_new, t_new = _signed_by(env_next, next_payload)
        assert good_old >= t_old, f"root {n + 1} not signed by root {n}'s threshold"
        assert good_new >= t_new, f"root {n + 1} not signed by its own threshold"

    p1, p2, p3, p4 = (r[1] for r in roots)
    assert set(p1["roles"]["root"]["keyids"]).isdisjoint(p2["roles"]["root"]["keyids"])
    assert p2["roles"]["root"]["threshold"] == 3
    assert p3["roles"]["root"] == p2["roles"]["root"]
    assert set(p2["roles"]["online"]["keyids"]) == v1_online
    assert set(p3["roles"]["online"]["keyids"]).isdisjoint(v1_online)
    assert p4["roles"] == p3["roles"]
    assert p4["expires"] == "2027-01-01T08:00:00Z"

    # Current key files are the ones the newest root names; old ones retired, not deleted.
    assert {k.keyid for k in kd.root_keys()} == set(p4["roles"]["root"]["keyids"])
    assert {k.keyid for k in kd.online_keys()} == set(p4["roles"]["online"]["keyids"])
    retired = list((kd_path / "retired").rglob("*.pem"))
    assert len(retired) == 3 + 1  # three v1 root keys, one v1/v2 online key
    assert not (kd_path / "staged").exists()
    assert sorted(p.name for p in kd_path.glob("*.pem")) == [
        "online-1.pem",
        "root-1.pem",
        "root-2.pem",
        "root-3.pem",
        "root-4.pem",
    ]


def test_rotation_needs_old_threshold_present(tmp_path: Path) -> None:
    kd_path = tmp_path / "keys"
    keygen(kd_path, signers=3, threshold=2, now=NOW)
    offline = tmp_path / "safe"
    offline.mkdir()
    # Move two of three root keys offline: one left, threshold 2.
    for name in ("root-2.pem", "root-3.pem"):
        os.replace(kd_path / name, offline / name)
    with pytest.raises(ConfigurationError, match="threshold is 2"):
        rotate_root(kd_path, new_root_signers=2, now=NOW)
    assert KeyDir(kd_path).root_version == 1
    assert not (kd_path / "root" / "2.root.json").exists()
    # Bring one back: 2-of-3 is enough, even when keeping the same root keys.
    os.replace(offline / "root-2.pem", kd_path / "root-2.pem")
    assert rotate_root(kd_path, now=NOW) == 2
    env, payload = _root(kd_path / "root.json")
    _, p1 = _root(kd_path / "root" / "1.root.json")
    assert payload["roles"]["root"] == p1["roles"]["root"]
    assert _signed_by(env, payload) == (2, 2)
    # The key that stayed offline is still a root key (not retired).
    assert not list((kd_path / "retired").rglob("*.pem"))


def test_rotation_rejects_bad_threshold(tmp_path: Path) -> None:
    kd_path = tmp_path / "keys"
    keygen(kd_path, signers=2, threshold=2, now=NOW)
    with pytest.raises(ConfigurationError, match="threshold"):
        rotate_root(kd_path, new_root_signers=1, now=NOW)  # keeps threshold 2 > 1 key
    with pytest.raises(ConfigurationError, match="rotate_online"):
        rotate_root(kd_path, online_signers=2, now=NOW)
    assert KeyDir(kd_path).root_version == 1


def test_sign_root_can_forge_and_undersign(tmp_path: Path) -> None:
    """sign_root does not check: tests use it to make roots a client must reject."""
    kd_path = tmp_path / "keys"
    keygen(kd_path, signers=3, threshold=2, now=NOW)
    kd = KeyDir(kd_path)
    old = kd.root_payload
    new_keys = [SigningKey.generate() for _ in range(2)]
    payload = build_root_payload(
        version=2,
        expires="2030-01-01T00:00:00Z",
        root_keys=new_keys,
        root_threshold=2,
        online_keys=kd.online_keys(),
        online_threshold=1,
    )
    # Under-signed: only one old root key and the new ones.
    data = sign_root(payload, [kd.root_keys()[0], *new_keys])
    env = Envelope.from_bytes(data)
    assert env.payload_json() == payload
    good_old, t_old = _signed_by(env, old)
    assert good_old == 1 < t_old
    good_new, t_new = _signed_by(env, payload)
    assert good_new == 2 >= t_new
    # Forged: signed only by attacker keys.
    attacker = [SigningKey.generate(), SigningKey.generate()]
    forged = Envelope.from_bytes(sign_root(payload, attacker))
    assert _signed_by(forged, old)[0] == 0


def test_interrupted_rotation_recovers(tmp_path: Path) -> None:
    """Crash after root/2.root.json but before root.json and the key moves."""
    kd_path = tmp_path / "keys"
    keygen(kd_path, now=NOW)
    rotate_root(kd_path, new_root_signers=1, rotate_online=True, now=NOW)
    # Simulate the crash window: put root.json back to v1, keys back to staged.
    v1 = (kd_path / "root" / "1.root.json").read_bytes()
    (kd_path / "root.json").write_bytes(v1)
    staged = kd_path / "staged"
    staged.mkdir()
    for name in ("root-1.pem", "online-1.pem"):
        os.replace(kd_path / name, staged / name)
    for p in (kd_path / "retired").rglob("*.pem"):
        os.replace(p, kd_path / p.name)
    # The next rotation finishes the previous one first, then makes v3.
    assert rotate_root(kd_path, now=NOW) == 3
    kd = KeyDir(kd_path)
    _, p2 = _root(kd_path / "root" / "2.root.json")
    _, p3 = _root(kd_path / "root.json")
    assert p3["roles"] == p2["roles"]
    assert {k.keyid for k in kd.root_keys()} == set(p3["roles"]["root"]["keyids"])
    assert {k.keyid for k in kd.online_keys()} == set(p3["roles"]["online"]["keyids"])
    assert not staged.exists()


def test_online_keys_must_meet_threshold(tmp_path: Path) -> None:
    kd_path = tmp_path / "keys"
    keygen(kd_path, online_signers=2, online_threshold=2, now=NOW)
    (kd_path / "online-2.pem").unlink()
    with pytest.raises(ConfigurationError, match="online threshold is 2"):
        KeyDir(kd_path).online_keys()


def test_malformed_root_is_format_error(tmp_path: Path) -> None:
    kd_path = tmp_path / "keys"
    keygen(kd_path, now=NOW)
    (kd_path / "root.json").write_bytes(b"{}")
    with pytest.raises(FormatError):
        KeyDir(kd_path).root_version  # noqa: B018


def _pem_pub(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_add_subscriber(tmp_path: Path) -> None:
    kd_path = tmp_path / "keys"
    keygen(kd_path, now=NOW)
    ed, xk = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    add_subscriber(kd_path, "hotel-001", _pem_pub(ed), _pem_pub(xk))
    add_subscriber(kd_path, "bank.a_2", None, _pem_pub(X25519PrivateKey.generate()))
    kd = KeyDir(kd_path)
    assert sorted(kd.subscriber_box_keys()) == ["bank.a_2", "hotel-001"]
    assert sorted(kd.subscriber_report_keys()) == ["hotel-001"]
    assert kd.subscriber_box_keys()["hotel-001"].public_bytes_raw() == (
        xk.public_key().public_bytes_raw()
    )
    for bad in ("", "-x", "../etc", "a/b", "x" * 65, "名字"):
        with pytest.raises(ConfigurationError):
            add_subscriber(kd_path, bad, _pem_pub(ed), None)
    with pytest.raises(ConfigurationError):
        add_subscriber(kd_path, "h2", None, None)
    # Key types are checked: an Ed25519 key is not a box key, garbage is not a key.
    with pytest.raises(ConfigurationError):
        add_subscriber(kd_path, "h3", None, _pem_pub(ed))
    with pytest.raises(ConfigurationError):
        add_subscriber(kd_path, "h4", b"not a pem", None)
    assert sorted(KeyDir(kd_path).subscriber_box_keys()) == ["bank.a_2", "hotel-001"]
