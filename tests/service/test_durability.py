"""No acknowledged report is lost (issue 16): kill -9 and SIGTERM during uploads, restart;
several server processes on one PostgreSQL; the persistent, private state directory.

Real server processes (``python -m intercept_sdk._platform.server``), real signals. The
default suite runs 5 rounds per signal and engine; ``-m slow`` runs 25.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from _servers import make_fake_site, make_report, register_subscriber
from intercept_sdk._platform.server import run_server_process
from intercept_sdk._platform.server.storage import open_report_store
from intercept_sdk._protocol.signing import SigningKey


def _upload_until_gone(url: str, key: SigningKey, acked: set[str], stop: threading.Event) -> None:
    """Post batches of 5 until the server goes away; remember the ids answered 200."""
    with httpx.Client(base_url=url, timeout=5) as c:
        while not stop.is_set():
            batch = [make_report(key, "hotel-001") for _ in range(5)]
            try:
                r = c.post("/reports", json={"reports": batch})
            except httpx.HTTPError:
                return
            if r.status_code == 200:
                acked.update(r.json()["accepted"])
                acked.update(r.json()["duplicates"])


def _stored_ids(state: Path, database: str | None) -> set[str]:
    store = open_report_store(database, state)
    store.open()
    try:
        return {r["report_id"] for r in store.query(None, None, None, 10**7)}
    finally:
        store.close()


def _rounds(tmp_path: Path, database: str | None, sig: int, rounds: int) -> None:
    site = make_fake_site(tmp_path / "site")
    subs = tmp_path / "subscribers"
    subs.mkdir()
    key = register_subscriber(subs, "hotel-001")
    state = tmp_path / "state"
    acked: set[str] = set()
    rng = random.Random(16)
    for n in range(rounds):
        proc = run_server_process(site.root, subscribers_dir=subs, state_dir=state,
                                  database=database, log_level="error")  # fmt: skip
        stop = threading.Event()
        threads = [threading.Thread(target=_upload_until_gone, args=(proc.url, key, acked, stop))
                   for _ in range(3)]  # fmt: skip
        before = len(acked)
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10  # uploads under way (the machine may be busy)...
        while len(acked) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))  # ...then the signal at a random moment
        proc.send_signal(sig)
        status = proc.wait(15)
        stop.set()
        for t in threads:
            t.join(15)
        proc.stop()
        if sig == signal.SIGTERM:
            assert status == 0, f"round {n}: SIGTERM exit status {status}"
        assert len(acked) > before, f"round {n}: no upload was acknowledged"
        missing = acked - _stored_ids(state, database)
        assert not missing, f"round {n}: {len(missing)} acknowledged reports lost"
    # And the restarted server shows them all.
    with run_server_process(site.root, subscribers_dir=subs, state_dir=state,
                            database=database, log_level="error") as proc:  # fmt: skip
        token = (state / "operator.token").read_text().strip()
        stats = httpx.get(proc.url + "/stats", headers={"Authorization": f"Bearer {token}"}).json()
        assert stats["reports"] >= len(acked)  # acknowledged, plus stored-but-unanswered
    print(f"\n{rounds} rounds of {signal.Signals(sig).name}: {len(acked)} acknowledged, none lost")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill9", "sigterm"])
def test_signals_during_uploads_lose_nothing(
    tmp_path: Path, database: str | None, sig: int
) -> None:
    _rounds(tmp_path, database, sig, 5)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill9", "sigterm"])
def test_signals_during_uploads_lose_nothing_25_rounds(
    tmp_path: Path, database: str | None, sig: int
) -> None:
    _rounds(tmp_path, database, sig, 25)


def test_two_server_processes_share_one_postgresql(tmp_path: Path, pg_dsn: str) -> None:
    """Two ``serve`` processes on one database: the same reports sent to both are stored
    once (the UNIQUE constraint decides), and each process lists what the other stored."""
    site = make_fake_site(tmp_path / "site")
    subs = tmp_path / "subscribers"
    subs.mkdir()
    key = register_subscriber(subs, "hotel-001")
    batches = [[make_report(key, "hotel-001") for _ in range(20)] for _ in range(10)]
    with (
        run_server_process(site.root, subscribers_dir=subs, state_dir=tmp_path / "a",
                           database=pg_dsn) as a,
        run_server_process(site.root, subscribers_dir=subs, state_dir=tmp_path / "b",
                           database=pg_dsn) as b,
    ):  # fmt: skip
        accepted: list[str] = []
        lock = threading.Lock()

        def send(url: str) -> None:
            for batch in batches:
                r = httpx.post(url + "/reports", json={"reports": batch}, timeout=10)
                assert r.status_code == 200
                with lock:
                    accepted.extend(r.json()["accepted"])

        threads = [threading.Thread(target=send, args=(u,)) for u in (a.url, b.url)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(accepted) == sorted(r for batch in batches for r in _ids(batch))
        for proc, state in ((a, tmp_path / "a"), (b, tmp_path / "b")):
            token = (state / "operator.token").read_text().strip()
            rows = httpx.get(proc.url + "/reports", params={"limit": 1000},
                             headers={"Authorization": f"Bearer {token}"}).json()  # fmt: skip
            assert len(rows) == 200


def _ids(batch: list[dict[str, object]]) -> list[str]:
    import base64
    import json

    return [json.loads(base64.b64decode(str(e["payload"])))["report_id"] for e in batch]


def test_cli_serve_defaults_to_a_private_persistent_state_dir(tmp_path: Path) -> None:
    """``intercept-sdk serve`` without ``--state``: $INTERCEPT_PLATFORM_STATE (else XDG),
    created 0700 with operator.token and reports.sqlite 0600, path printed; SIGTERM exits 0."""
    site = make_fake_site(tmp_path / "site")
    state = tmp_path / "xdg" / "intercept-sdk" / "platform"
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg")}
    env.pop("INTERCEPT_PLATFORM_STATE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "intercept_sdk._cli.main", "serve", "--site", str(site.root),
         "--port", "0"],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        second = proc.stdout.readline()
        assert first.startswith("listening on http://127.0.0.1:")
        assert str(state / "operator.token") in second
        assert state.stat().st_mode & 0o777 == 0o700
        for name in ("operator.token", "reports.sqlite"):
            assert (state / name).stat().st_mode & 0o777 == 0o600, name
        url = first.split()[2]
        assert httpx.get(url + "/reports").status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
