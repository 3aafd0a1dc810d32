"""A throwaway PostgreSQL server for the publish tests: ``initdb`` in a temporary folder, password
authentication (scram) over TCP on a free loopback port, started with ``pg_ctl`` and removed at
the end. Runs as the ``postgres`` user when the tests run as root (initdb refuses root).

The server binaries come from Debian's ``postgresql`` package, which ``scripts/dev`` installs
when they are missing.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PASSWORD = "s3cret-pw"  # the superuser's password in the throwaway cluster
USER = "failstore_test"


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    folder: Path
    port: int
    run_as: list[str]

    @property
    def url(self) -> str:
        """With the password in it."""
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/postgres"

    @property
    def bare_url(self) -> str:
        """Without a password (for PGPASSWORD / .pgpass)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        pg_ctl = find_binary("pg_ctl")
        subprocess.run(
            [*self.run_as, pg_ctl, "-D", str(self.folder / "data"), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.folder, ignore_errors=True)


def start() -> PgServer:
    initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
    if not initdb or not pg_ctl:
        raise RuntimeError(
            "PostgreSQL's server programs (initdb, pg_ctl) are not on this machine: "
            "run scripts/dev setup, which installs Debian's postgresql package"
        )
    folder = Path(tempfile.mkdtemp(prefix="failstore-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, user="postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    pwfile = folder / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if run_as:
        shutil.chown(pwfile, user="postgres")
    subprocess.run(
        [*run_as, initdb, "-D", str(folder / "data"), "-U", USER, "--pwfile", str(pwfile),
         "-A", "scram-sha-256", "-E", "UTF8", "--no-sync", "--locale", "C"],
        check=True, capture_output=True,
    )  # fmt: skip
    for attempt in range(5):
        port = _free_port()
        opts = (
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60"
        )
        done = subprocess.run(
            [*run_as, pg_ctl, "-D", str(folder / "data"), "-o", opts, "-l",
             str(folder / "log"), "-w", "-t", "60", "start"],
            capture_output=True, check=False,
        )  # fmt: skip
        if done.returncode == 0:
            return PgServer(folder, port, run_as)
        time.sleep(0.2 * (attempt + 1))  # the port was taken meanwhile: another
    log = (folder / "log").read_text(errors="replace") if (folder / "log").exists() else ""
    raise RuntimeError(f"PostgreSQL did not start: {log[-500:]}")
