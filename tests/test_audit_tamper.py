"""Every tamper of the audit log the private-distribution issue lists is detected, and a
copied audit directory identifies no one.

The attacks are written from the documented format (``_audit_forge``), for two
attackers: one who copied or can write ``audit/`` but lacks the per-cache secret
(``audit.key``), and an insider who also read the secret but lacks the subscriber's
private key. Each test verifies with the subscriber's public key unless it says
otherwise.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import _audit_forge as forge
from _privacy import recover_ids_from_audit_log
from intercept_sdk import Person
from intercept_sdk._client.audit import AuditLog, AuditReport, verify_audit
from intercept_sdk._client.keys import load_subscriber_key, subscriber_keygen
from intercept_sdk._platform.publish import current_hash_key
from intercept_sdk.testing import TestPlatform, make_id_number

NOW = _dt.datetime(2026, 1, 31, 8, 0, 0, 123456, tzinfo=_dt.timezone.utc)


class Unit:
    """A cache with a signed audit log of two closed files, two batches each."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache = root / "cache"
        self.audit = self.cache / "audit"
        self.key_dir = root / "subscriber"
        subscriber_keygen(self.key_dir)
        self.key = load_subscriber_key(self.key_dir).report
        self.files = [self.write(start=0), self.write(start=100)]
        assert self.verify().ok and self.verify().checkpoints == 4

    def write(self, *, start: int, signing_key: Ed25519PrivateKey | None = None) -> Path:
        log = AuditLog(self.audit, signing_key=signing_key or self.key, flush_interval=3600)
        for batch in range(2):
            for i in range(start + batch * 10, start + batch * 10 + 10):
                action = "block" if i % 5 == 0 else "allow"
                log.record("travel.flight", i.to_bytes(16, "big"), action, (), 7, NOW)
            log.flush()
        log.close()
        return log.path

    def verify(self, **options: object) -> AuditReport:
        options.setdefault("public_key", self.key.public_key())
        return verify_audit(self.audit, **options)  # type: ignore[arg-type]

    def lines(self, n: int = 0) -> list[bytes]:
        return self.files[n].read_bytes().splitlines(keepends=True)


@pytest.fixture
def unit(tmp_path: Path) -> Unit:
    return Unit(tmp_path)


def _edit(line: bytes) -> bytes:
    assert b'"action":"block"' in line
    return line.replace(b'"action":"block"', b'"action":"allow"')


def _problems(report: AuditReport) -> str:
    assert not report.ok, report
    return " | ".join(report.problems)


# -- the tampers -------------------------------------------------------------------------


def test_an_edited_line(unit: Unit) -> None:
    lines = unit.lines()
    lines[5] = _edit(lines[5])
    unit.files[0].write_bytes(b"".join(lines))
    assert f"{unit.files[0].name}:6: hash chain broken" in _problems(unit.verify())


def test_the_unkeyed_chain_recomputed_after_an_edit(unit: Unit, tmp_path: Path) -> None:
    """The old attack: edit, then recompute SHA-256(prev || line) down the file. On the
    signed log, and on a log written without a subscriber key (verified without a
    public key: only the secret stands in the way)."""
    rows = forge.rows(unit.files[0])
    rows[0]["action"] = "allow"
    unit.files[0].write_bytes(forge.rechain(rows, None)[0])
    assert f"{unit.files[0].name}:1: hash chain broken" in _problems(unit.verify())
    log = AuditLog(tmp_path / "plain" / "audit", flush_interval=3600)
    log.record("travel.flight", bytes(16), "block", ("E1",), 7, NOW)
    log.record("travel.flight", bytes(15) + b"1", "allow", (), 7, NOW)
    log.close()
    assert verify_audit(log.directory).ok
    rows = forge.rows(log.path)
    rows[0]["action"] = "allow"
    log.path.write_bytes(forge.rechain(rows, None)[0])
    assert f"{log.path.name}:1: hash chain broken" in _problems(verify_audit(log.directory))


def test_dropped_checkpoints(unit: Unit) -> None:
    rows = [r for r in forge.rows(unit.files[0]) if "checkpoint" not in r]
    unit.files[0].write_bytes(forge.rechain(rows, None)[0])
    assert "hash chain broken" in _problems(unit.verify())


@pytest.mark.parametrize("index_says", ["signed", "unsigned"])
def test_dropped_checkpoints_by_an_insider_with_the_secret(unit: Unit, index_says: str) -> None:
    """The insider recomputes the keyed chain and a consistent INDEX: the public key
    still demands the checkpoints, whatever INDEX claims."""
    key = forge.chain_key(forge.read_secret(unit.cache))
    for path in unit.files:
        rows = [r for r in forge.rows(path) if "checkpoint" not in r]
        path.write_bytes(forge.rechain(rows, key)[0])
    forge.rewrite_index(unit.audit, key, unit.files, signed=index_says == "signed")
    problems = _problems(unit.verify())
    if index_says == "signed":
        assert "not a signed checkpoint (dropped)" in problems
    else:
        assert "written without a subscriber key" in problems


def test_a_deleted_file(unit: Unit) -> None:
    unit.files[1].unlink()
    problems = _problems(unit.verify())
    assert f"{unit.files[1].name}: listed in INDEX up to line 22 but missing" in problems


@pytest.mark.parametrize("cut", ["after a checkpoint", "inside a batch"])
def test_truncated_at_a_line_boundary(unit: Unit, cut: str) -> None:
    lines = unit.lines()
    keep = 11 if cut == "after a checkpoint" else 7
    assert (b'"checkpoint"' in lines[keep - 1]) == (cut == "after a checkpoint")
    unit.files[0].write_bytes(b"".join(lines[:keep]))
    problems = _problems(unit.verify())
    assert f"{unit.files[0].name}: ends at line {keep}, INDEX recorded line 22" in problems


def test_a_foreign_file(unit: Unit) -> None:
    """A file INDEX never listed, even one whose chain and signatures verify (a copy of
    a genuine file under another name)."""
    foreign = unit.audit / f"audit-{'9' * 20}-1-abcdef.jsonl"
    shutil.copyfile(unit.files[0], foreign)
    assert f"{foreign.name}: not listed in INDEX (a file added)" in _problems(unit.verify())


def test_a_forged_checkpoint_signature(unit: Unit) -> None:
    """An edit, the chain recomputed and each checkpoint signed by another key: plain
    verify (no public key) must not pass it either."""
    rows = forge.rows(unit.files[0])
    rows[0]["action"] = "allow"
    forger = Ed25519PrivateKey.generate()
    unit.files[0].write_bytes(forge.rechain(rows, None, forger.sign)[0])
    assert not verify_audit(unit.audit).ok
    assert not unit.verify().ok


def test_a_forged_checkpoint_signature_by_an_insider_with_the_secret(unit: Unit) -> None:
    key = forge.chain_key(forge.read_secret(unit.cache))
    rows = forge.rows(unit.files[0])
    rows[0]["action"] = "allow"
    forger = Ed25519PrivateKey.generate()
    unit.files[0].write_bytes(forge.rechain(rows, key, forger.sign)[0])
    forge.rewrite_index(unit.audit, key, unit.files, signed=True)
    assert f"{unit.files[0].name}:11: checkpoint signature invalid" in _problems(unit.verify())
    assert "no public key given" in _problems(verify_audit(unit.audit))


def test_index_edited_or_removed(unit: Unit) -> None:
    index = unit.audit / "INDEX"
    lines = index.read_bytes().splitlines(keepends=True)
    index.write_bytes(b"".join(lines[:2] + lines[3:]))  # one head dropped
    assert "INDEX:3: hash chain broken" in _problems(unit.verify())
    index.unlink()
    assert "INDEX: missing" in _problems(unit.verify())


def test_the_audit_key_removed(unit: Unit) -> None:
    (unit.cache / "audit.key").unlink()
    assert "the audit key is missing" in _problems(unit.verify())


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INTERCEPT_")}
    return subprocess.run(
        [sys.executable, "-m", "intercept_sdk._cli.main", "audit", "verify", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**clean, **env},
        timeout=60,
    )


def test_command_line_without_a_key_fails_and_with_one_reports(unit: Unit) -> None:
    plain = _cli("--cache-dir", str(unit.cache), env={})
    assert plain.returncode == 2, plain.stdout + plain.stderr
    assert "needs the subscriber's public key" in plain.stderr
    # the configured subscriber key (a directory), then a public key file
    configured = _cli(
        env={"INTERCEPT_CACHE_DIR": str(unit.cache), "INTERCEPT_SUBSCRIBER_KEY": str(unit.key_dir)}
    )
    assert configured.returncode == 0, configured.stdout + configured.stderr
    assert "2 files, 40 records, 4 signed checkpoints" in configured.stdout
    pub = str(unit.key_dir / "report.ed25519.pub.pem")
    unit.files[1].unlink()
    tampered = _cli("--dir", str(unit.audit), "--public-key", pub, env={})
    assert tampered.returncode == 1 and "PROBLEM" in tampered.stdout
    assert "missing (deleted)" in tampered.stdout


# -- privacy ------------------------------------------------------------------------------


def test_a_copied_audit_log_yields_no_id_numbers(tmp_path: Path) -> None:
    """Hotel guests who are not listed are checked; a thief copies ``audit/`` (not the
    cache's secret) and has the list's hash key and a candidate list holding every true
    ID number: nothing comes back. The same attack on lines keyed the old way (by the
    list's keyed hash) gives every guest back."""
    guests = [make_id_number(f"19{60 + i}-0{1 + i % 9}-1{i % 9}", seq=i) for i in range(30)]
    with TestPlatform(tmp_path) as p:
        p.add_person(name="张三")
        c = p.client()
        for guest in guests + guests[:5]:  # five come back
            c.check(Person(guest), "consumption.star_hotel")
        # site format 2 keeps the hash key secret (only in the units' sealed boxes): give
        # the thief the leaked key anyway, the best case for the attack
        _epoch, hash_key = current_hash_key(p.keys_dir)
        km = c._core.lookup.keymaker()
        cache = Path(c.status().cache_dir)
        c.close()
        stolen = shutil.copytree(cache / "audit", tmp_path / "stolen")
    candidates = guests + [make_id_number("1990-01-01", seq=s) for s in range(200)]
    assert recover_ids_from_audit_log(stolen, hash_key, candidates) == {}
    (copied,) = stolen.glob("*.jsonl")
    assert not (stolen.parent / "audit.key").exists()
    records = [r for r in forge.rows(copied) if "key" in r]
    assert len(records) == 35 and len({r["key"] for r in records}) == 30  # repeats countable
    # the attack itself works: on the old format it recovers every guest
    old = tmp_path / "old-format"
    old.mkdir()
    (old / "audit-old.jsonl").write_text(
        "".join(f'{{"key":"{km.person(g).hex()}"}}\n' for g in guests)
    )
    assert sorted(recover_ids_from_audit_log(old, hash_key, candidates).values()) == sorted(guests)
