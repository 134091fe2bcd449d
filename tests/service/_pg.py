"""A private PostgreSQL cluster for tests: initdb in a temp dir, on a free loopback port.

PostgreSQL refuses to run as root, so as root the cluster is created and run as the
``postgres`` user (Debian's package creates it) or else ``nobody``, through ``runuser``.
Everything is bounded in time; :func:`find_bin` returns None when the binaries are absent
(the tests then skip with a message naming the Debian package).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path


def find_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<n>/bin`` with initdb, or one on PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _as_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"]
    raise RuntimeError("running as root and no postgres/nobody user to run PostgreSQL as")


@dataclass
class Cluster:
    bin: Path
    root: Path
    port: int
    prefix: list[str]

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def new_database(self) -> str:
        """A fresh empty database; its DSN."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run(
            [*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.root / "data"),
             "-m", "immediate", "-w", "-t", "20", "stop"],
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


def start(bin_dir: Path) -> Cluster:
    """initdb + pg_ctl start (fsync left on: the durability tests rely on it)."""
    prefix = _as_user()
    root = Path(tempfile.mkdtemp(prefix="intercept-pg-"))
    if prefix:
        user = prefix[2]
        ent = pwd.getpwnam(user)
        os.chown(root, ent.pw_uid, ent.pw_gid)
    data = root / "data"
    subprocess.run(
        [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
         "-E", "UTF8", "--no-locale"],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    port = _free_port()
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200"
    subprocess.run(
        [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", opts, "-l",
         str(root / "log"), "-w", "-t", "60", "start"],
        capture_output=True, timeout=90, check=True,
    )  # fmt: skip
    cluster = Cluster(bin_dir, root, port, prefix)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                cluster.stop()
                raise
            time.sleep(0.1)
    return cluster
