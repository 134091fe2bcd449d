"""The audit log: every decision recorded, keyed-hash-chained, pseudonymous under a
per-cache secret, buffered off the check path, safe with several processes, and a crash
never breaks verification. (Tampering: tests/test_audit_tamper.py.)"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import hmac
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import _audit_forge as forge
from intercept_sdk import Entity, Officer, Person, StoreCorrupted
from intercept_sdk._client import audit as audit_module
from intercept_sdk._client.audit import (
    AuditLog,
    _dumps,
    _Keys,
    _record_line,
    _TimeFormat,
    load_or_create_audit_key,
    read_audit_key,
    verify_audit,
)
from intercept_sdk._protocol.signing import write_private_key, write_public_key
from intercept_sdk.testing import TestPlatform, make_id_number, make_uscc

NOW = _dt.datetime(2026, 1, 31, 8, 0, 0, 123456, tzinfo=_dt.timezone.utc)
SECRET = bytes(range(32))


def _pseudonym(secret: bytes, key: bytes) -> str:
    return hmac.digest(secret, key, "sha256")[:16].hex()


def _crash(log: AuditLog) -> None:
    """What kill -9 after the last flush leaves: no close line in INDEX, nothing more."""
    log._closed = True
    audit_module._logs.discard(log)


def _fill(log: AuditLog, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        log.record(
            "travel.flight",
            i.to_bytes(16, "big"),
            "block" if i % 7 == 0 else "allow",
            (f"E{i}",) if i % 7 == 0 else (),
            3,
            NOW,
        )


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


# -- what is recorded ---------------------------------------------------------------------------


def test_every_decision_is_recorded_without_plaintext_ids(tmp_path: Path) -> None:
    with TestPlatform(tmp_path) as p:
        listed = p.add_person(name="张三")
        officer_id = make_id_number("1970-03-03", seq=4)
        c = p.client()
        person = Person(listed["id_number"], name="张三")
        d1 = c.check(person, "consumption.star_hotel")
        d2 = c.check(Person(officer_id), "travel.flight")
        company = Entity(uscc=make_uscc(), officers=[Officer("legal_rep", Person(officer_id))])
        d3 = c.check(company, "supervision.key_target")
        screened = list(c.screen([person, company], "finance.credit"))
        cache = Path(c.status().cache_dir)
        c.close()  # flushes
        files = sorted((cache / "audit").glob("audit-*.jsonl"))
        assert len(files) == 1
        raw = files[0].read_text()
        for idn in (listed["id_number"], officer_id, listed["id_number"][:14]):
            assert idn not in raw
        assert "张三" not in raw  # no names either
        records = [r for r in _lines(files[0]) if "checkpoint" not in r]
        assert [r["action"] for r in records] == [
            d1.action,
            d2.action,
            d3.action,
            *(d.action for d in screened),
        ]
        first = records[0]
        assert set(first) == {
            "seq", "t", "measure", "key", "action", "entries", "version", "prev", "h"
        }  # fmt: skip
        assert first["measure"] == "consumption.star_hotel"
        assert first["entries"] == [listed["entry_id"]] and first["version"] == d1.list_version
        assert _dt.datetime.fromisoformat(str(first["t"])) == d1.checked_at
        km = c._core.lookup.keymaker()
        # a pseudonym under the cache's own secret, not the list's keyed hash
        secret = read_audit_key(cache / "audit.key")
        assert (cache / "audit.key").stat().st_mode & 0o777 == 0o600
        assert first["key"] == _pseudonym(secret, km.person(listed["id_number"]))
        assert first["key"] != km.person(listed["id_number"]).hex()
        assert records[2]["key"] == _pseudonym(secret, km.org(company.effective_org_code))
        # the same person checked again gets the same pseudonym
        assert records[3]["key"] == first["key"]
        report = verify_audit(cache / "audit", public_key=p.subscriber_key_dir)
        assert report.ok and report.records == 5 and report.files == 1
        assert report.checkpoints >= 1  # a subscriber key signs every flushed batch
        unverified = verify_audit(cache / "audit")  # checkpoints are never skipped
        assert not unverified.ok and "no public key given" in unverified.problems[0]
        assert c._core.reporter.checks_in(NOW.replace(year=2000), NOW.replace(year=2100)) == 5


def test_records_reach_disk_within_about_a_second(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    _fill(log, 3)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not log.path.exists():
        time.sleep(0.05)
    assert log.path.exists(), "the flush thread did not write within 3 s"
    assert len(_lines(log.path)) == 3 and log.pending() == 0
    log.close()


def test_close_flushes_and_later_records_are_ignored(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, flush_interval=3600)
    _fill(log, 10)
    log.close()
    log.close()
    _fill(log, 5)  # after close: ignored, never half-written
    assert len(_lines(log.path)) == 10
    assert verify_audit(tmp_path).records == 10


def test_fast_line_format_is_the_canonical_json() -> None:
    fmt = _TimeFormat()
    keys = _Keys(SECRET)
    rng = random.Random(4)
    prev = "0" * 64
    odd_entries = ('E"1', "E\\2", "条目", "a b")
    for i in range(300):
        t = NOW + _dt.timedelta(seconds=rng.randrange(0, 5), microseconds=rng.randrange(0, 10**6))
        entries: tuple[str, ...] = tuple(f"T{rng.randrange(10**7):07d}" for _ in range(i % 3))
        if i % 10 == 0:
            entries += (odd_entries[i % 4],)  # needs escaping: the slow path
        item = (t, "travel.flight", rng.randbytes(16), "block", entries, i)
        line, h = _record_line(keys, prev, i + 1, item, fmt)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        body = json.loads(line)
        assert body.pop("h") == h
        # everything before "h" is byte for byte the canonical JSON verify recomputes
        assert _dumps(body) == line[: line.rindex(b',"h":')] + b"}"
        assert (
            h == hmac.digest(forge.chain_key(SECRET), prev.encode() + _dumps(body), "sha256").hex()
        )
        assert h != hashlib.sha256(prev.encode() + _dumps(body)).hexdigest()
        assert body["key"] == _pseudonym(SECRET, item[2])
        assert body["entries"] == list(entries) and body["seq"] == i + 1
        assert _dt.datetime.fromisoformat(str(body["t"])) == t
        prev = h
    # a datetime in another zone is written in UTC
    t8 = NOW.astimezone(_dt.timezone(_dt.timedelta(hours=8)))
    assert _TimeFormat()(t8) == "2026-01-31T08:00:00.123456+00:00"


# -- tampering ------------------------------------------------------------------------------------


@pytest.fixture
def written(tmp_path: Path) -> Path:
    log = AuditLog(tmp_path, flush_interval=3600)
    _fill(log, 20)
    log.flush()
    _fill(log, 20, start=20)
    log.close()
    assert verify_audit(tmp_path).ok
    return log.path


def test_verify_ok(written: Path) -> None:
    report = verify_audit(written.parent)
    assert report.ok and report.records == 40 and report.problems == () and report.warnings == ()
    assert verify_audit(written.parent, raise_on_error=True).ok


def test_an_edited_line_is_detected(written: Path) -> None:
    lines = written.read_bytes().splitlines(keepends=True)
    assert b'"action":"block"' in lines[7]
    lines[7] = lines[7].replace(b'"action":"block"', b'"action":"allow"')
    written.write_bytes(b"".join(lines))
    report = verify_audit(written.parent)
    assert not report.ok
    assert report.problems == (
        f"{written.name}:8: hash chain broken (line edited, inserted or removed)",
    )
    with pytest.raises(StoreCorrupted, match="hash chain broken"):
        verify_audit(written.parent, raise_on_error=True)


@pytest.mark.parametrize("how", ["delete", "insert", "swap", "truncate_head"])
def test_removed_inserted_or_reordered_lines_are_detected(written: Path, how: str) -> None:
    lines = written.read_bytes().splitlines(keepends=True)
    if how == "delete":
        del lines[10]
    elif how == "insert":
        lines.insert(5, lines[5])
    elif how == "swap":
        lines[3], lines[4] = lines[4], lines[3]
    else:
        del lines[0]
    written.write_bytes(b"".join(lines))
    report = verify_audit(written.parent)
    assert not report.ok and "hash chain broken" in report.problems[0]


def test_garbage_in_the_middle_is_a_problem_not_a_torn_tail(written: Path) -> None:
    lines = written.read_bytes().splitlines(keepends=True)
    lines.insert(6, b"\x00\x00\x00\n")
    written.write_bytes(b"".join(lines))
    report = verify_audit(written.parent)
    assert report.problems == (f"{written.name}:7: not an audit record",)


def test_signed_checkpoints_catch_a_recomputed_chain(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    log = AuditLog(tmp_path / "audit", signing_key=key, flush_interval=3600)
    _fill(log, 10)
    log.close()
    audit_dir = tmp_path / "audit"
    assert verify_audit(audit_dir, public_key=key.public_key()).ok
    assert verify_audit(audit_dir, public_key=key.public_key()).checkpoints == 1
    # an insider who holds the secret edits a record, recomputes every hash after it
    # and rewrites INDEX to match: only the signature is left to tell
    chain_key = forge.chain_key(forge.read_secret(tmp_path))
    rows = forge.rows(log.path)
    assert rows[0]["action"] == "block"
    rows[0]["action"] = "allow"
    log.path.write_bytes(forge.rechain(rows, chain_key)[0])
    forge.rewrite_index(audit_dir, chain_key, [log.path], signed=True)
    report = verify_audit(audit_dir, public_key=key.public_key())
    assert report.problems == (f"{log.path.name}:11: checkpoint signature invalid",)
    other = Ed25519PrivateKey.generate().public_key()
    assert not verify_audit(audit_dir, public_key=other).ok


# -- crashes and failures -----------------------------------------------------------------------


@pytest.fixture
def crashed(tmp_path: Path) -> Path:
    """A signed log whose writer died after its second flush (no close in INDEX)."""
    key = Ed25519PrivateKey.generate()
    write_public_key(tmp_path / "report.pub.pem", key.public_key())
    log = AuditLog(tmp_path / "audit", signing_key=key, flush_interval=3600)
    _fill(log, 20)
    log.flush()
    _fill(log, 20, start=20)
    log.flush()
    _crash(log)
    assert verify_audit(tmp_path / "audit", public_key=tmp_path / "report.pub.pem").ok
    return log.path


def _verify_crashed(path: Path) -> audit_module.AuditReport:
    return verify_audit(path.parent, public_key=path.parent.parent / "report.pub.pem")


def test_torn_tail_is_a_warning_and_the_next_writer_starts_a_new_file(crashed: Path) -> None:
    with crashed.open("ab") as f:
        f.write(b'{"seq":43,"t":"2026-01-31T08:00:0')  # the crash hit mid-write
    report = _verify_crashed(crashed)
    assert report.ok and report.records == 40
    assert report.warnings == (f"{crashed.name}:43: torn last line (the writer crashed mid-write)",)
    # the next process writes its own file: the torn one is never continued
    key = audit_module.load_verifying_key(crashed.parent.parent / "report.pub.pem")
    log = AuditLog(crashed.parent, signing_key=Ed25519PrivateKey.generate())
    _fill(log, 5)
    log.close()
    assert log.path != crashed
    report = verify_audit(crashed.parent, public_key=key)
    assert not report.ok  # the new writer signed with another key...
    log.path.unlink()  # (and deleting its file is caught)
    assert any(
        "missing (deleted)" in p for p in verify_audit(crashed.parent, public_key=key).problems
    )


def test_torn_tail_after_a_crash_verifies_on_the_command_line(crashed: Path) -> None:
    with crashed.open("ab") as f:
        f.write(b'{"seq":43,"t":"2026-01-31T08:00:0')
    cmd = [sys.executable, "-m", "intercept_sdk._cli.main", "audit", "verify"]
    pub = str(crashed.parent.parent / "report.pub.pem")
    cli = subprocess.run(
        [*cmd, "--dir", str(crashed.parent), "--public-key", pub],
        capture_output=True,
        text=True,
        check=False,
    )
    # a crash does not make `audit verify` fail forever
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "PROBLEM" not in cli.stdout and "WARNING" in cli.stdout


def test_a_torn_tail_after_a_clean_close_is_a_problem(crashed: Path) -> None:
    log = AuditLog(crashed.parent, flush_interval=3600)
    _fill(log, 3)
    log.close()
    with log.path.open("ab") as f:
        f.write(b'{"seq":4,"t":"2026-01-31T08:00:0')
    report = verify_audit(crashed.parent)
    assert f"{log.path.name}: written after it was closed at line 3" in report.problems


def test_zero_filled_last_line_is_a_warning(crashed: Path) -> None:
    with crashed.open("ab") as f:
        f.write(b"\x00" * 40 + b"\n")  # what a power loss can leave behind
    report = _verify_crashed(crashed)
    assert report.ok and report.warnings and "unreadable last line" in report.warnings[0]


def test_unsigned_records_after_the_last_checkpoint_of_a_crashed_file_are_a_warning(
    crashed: Path,
) -> None:
    lines = crashed.read_bytes().splitlines(keepends=True)
    assert b'"checkpoint"' in lines[-1]
    crashed.write_bytes(b"".join(lines[:-1]))  # the last batch cut short before its checkpoint
    index = crashed.parent / "INDEX"
    entries = index.read_bytes().splitlines(keepends=True)
    assert b'"op":"head"' in entries[-1] and b'"at":42' in entries[-1]
    index.write_bytes(b"".join(entries[:-1]))  # ...so its head was never recorded
    report = _verify_crashed(crashed)
    assert report.ok and report.records == 40
    assert report.warnings == (
        f"{crashed.name}: lines 22-41 after the last checkpoint are not signed "
        "(the writer stopped mid-batch)",
    )


def test_a_failed_write_is_rolled_back_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(tmp_path, flush_interval=3600)
    _fill(log, 5)
    log.flush()
    _fill(log, 5, start=5)
    real_write = os.write

    def disk_full(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data)[: len(data) // 2])  # half a batch reaches the disk...
        raise OSError(errno.ENOSPC, "No space left on device")  # ...then the disk is full

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        log.flush()
    monkeypatch.setattr(os, "write", real_write)
    assert log.pending() == 5  # nothing lost
    report = verify_audit(tmp_path)
    assert report.ok and report.records == 5 and report.warnings == ()  # rolled back
    log.flush()
    log.close()
    report = verify_audit(tmp_path)
    assert report.ok and report.records == 10 and report.warnings == ()
    assert [r["seq"] for r in _lines(log.path)] == list(range(1, 11))


def test_a_torn_index_line_is_cut_by_the_next_writer(crashed: Path) -> None:
    index = crashed.parent / "INDEX"
    with index.open("ab") as f:
        f.write(b'{"seq":9,"op":"he')  # the crash hit while recording a head
    report = _verify_crashed(crashed)
    assert report.ok and report.warnings == (
        "INDEX:4: torn last line (the writer crashed mid-write)",
    )
    log = AuditLog(crashed.parent, signing_key=None, flush_interval=3600)
    _fill(log, 2)
    log.close()
    assert b'{"seq":9,"op":"he' not in index.read_bytes()
    report = verify_audit(crashed.parent)  # the unsigned newcomer needs no key...
    assert "no public key given" in report.problems[0]  # ...but the signed file does
    assert all("INDEX" not in p for p in report.problems)


def test_the_secret_is_created_once_however_many_start_together(tmp_path: Path) -> None:
    results: list[bytes] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(load_or_create_audit_key(tmp_path / "audit.key"))
        )
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len(set(results)) == 1 and len(results[0]) == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.key"]  # no temp file left
    assert (tmp_path / "audit.key").stat().st_mode & 0o777 == 0o600
    (tmp_path / "audit.key").write_text("not hex\n")
    with pytest.raises(StoreCorrupted):  # never silently replaced
        load_or_create_audit_key(tmp_path / "audit.key")


def test_buffer_overflow_drops_oldest_with_a_gap_line(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, flush_interval=3600, max_buffer=5)
    _fill(log, 8)
    log.close()
    report = verify_audit(tmp_path)
    assert report.ok and report.records == 5
    assert report.warnings and "3 records dropped" in report.warnings[0]


_WRITER = textwrap.dedent(
    """
    import datetime, sys
    from pathlib import Path
    from intercept_sdk._client.audit import AuditLog
    from intercept_sdk._protocol.signing import load_private_key
    key = load_private_key(sys.argv[2]) if len(sys.argv) > 2 else None
    log = AuditLog(Path(sys.argv[1]), signing_key=key, flush_interval=0.002)
    now = datetime.datetime.now(datetime.timezone.utc)
    log.record("travel.flight", bytes(16), "allow", ("E1",), 1, now)
    log.flush()  # this run's file exists before the kill, however loaded the machine
    i = 0
    print("ready", flush=True)
    while True:
        for _ in range(200):
            i += 1
            log.record("travel.flight", i.to_bytes(16, "big"), "allow", ("E1", "E2"), 1, now)
        if i % 2000 == 0:
            log.flush()
    """
)
_CRASH_WARNINGS = ("torn last line", "unreadable last line", "after the last checkpoint")


@pytest.mark.parametrize("signed", [False, True])
def test_kill_9_mid_writing_leaves_a_verifiable_log(tmp_path: Path, signed: bool) -> None:
    rng = random.Random(9)
    key = Ed25519PrivateKey.generate() if signed else None
    extra: list[str] = []
    if key is not None:
        write_private_key(tmp_path / "key.pem", key)
        extra = [str(tmp_path / "key.pem")]
    audit_dir = tmp_path / "audit"
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(audit_dir), *extra],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    public = key.public_key() if key is not None else None
    report = verify_audit(audit_dir, public_key=public)
    assert report.ok, report.problems
    assert report.files >= 4 and report.records > 0
    assert report.checkpoints > 0 if signed else report.checkpoints == 0
    assert all(any(w in warning for w in _CRASH_WARNINGS) for warning in report.warnings)
    # and life goes on: a new writer appends a clean file
    log = AuditLog(audit_dir, signing_key=key)
    _fill(log, 3)
    log.close()
    again = verify_audit(audit_dir, public_key=public)
    assert again.ok and again.records == report.records + 3


def _concurrent_writer(directory: str, n: int) -> None:
    log = AuditLog(Path(directory), flush_interval=0.01)
    _fill(log, n)
    time.sleep(0.05)
    _fill(log, n, start=n)
    log.close()


def test_two_processes_writing_concurrently_both_verify(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_concurrent_writer, args=(str(tmp_path), 3000)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    report = verify_audit(tmp_path)
    assert report.ok and report.files == 2 and report.records == 12000
    assert report.warnings == ()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_writes_its_own_file(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, flush_interval=3600)
    _fill(log, 4)  # buffered in the parent when it forks
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            _fill(log, 2, start=100)
            log.close()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    log.close()
    files = sorted(tmp_path.glob("audit-*.jsonl"))
    assert len(files) == 2
    counts = sorted(len(_lines(f)) for f in files)
    assert counts == [2, 4]  # the parent's buffer is not written twice
    assert verify_audit(tmp_path).ok
