"""infra/up.sh records the addresses it used, and a new shell (nothing exported but the state dir)
sees the running stack through them: `status`, `env` and stack.env report the ports it really runs on.

Starts S3, PostgreSQL, the Prefect server on it and the setup (SKIP_DASK=1 SKIP_WORKER=1) on
non-default ports in a private state dir, then stops everything with infra/down.sh.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.services import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _fresh_env(state: Path, **extra: str) -> dict[str, str]:
    """A new login shell's environment: no PREFECT_*, AWS_*, S3_*, DASK_* variables."""
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "TOPOZARR_STATE": str(state)}
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        env["VENV"] = sys.prefix  # the scripts' default venv is the checkout's .venv
    return {**env, **extra}


def _process_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_no_comment_inside_a_line_continuation():
    """A comment line after a trailing backslash ends the command there: what follows runs on its own (and
    variable assignments before it never reach the command)."""
    found = []
    for script in sorted((REPO / "infra").glob("*.sh")):
        lines = script.read_text().splitlines()
        for number, (line, following) in enumerate(zip(lines, lines[1:]), start=2):
            if line.rstrip().endswith("\\") and following.lstrip().startswith("#"):
                found.append(f"{script.relative_to(REPO)}:{number}: {following.strip()[:60]}")
    assert not found, found


def test_a_new_shell_sees_the_ports_up_sh_used(tmp_path):
    state = tmp_path / "state"
    s3_port, prefect_port, pg_port = free_port(), free_port(), free_port()
    assert 5555 not in (s3_port, prefect_port) and 4200 not in (s3_port, prefect_port)
    up_env = _fresh_env(state, S3_PORT=str(s3_port), PREFECT_PORT=str(prefect_port), PG_PORT=str(pg_port),
                        SKIP_DASK="1", SKIP_WORKER="1", TOPOZARR_WRITES_LIMIT="3")
    try:
        up = _run(["infra/up.sh"], up_env, timeout=240)
        assert up.returncode == 0, f"{up.stdout}\n{up.stderr}"
        exports = dict(line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines()
                       if line.startswith("export "))
        assert exports["S3_PORT"] == str(s3_port)
        assert exports["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{s3_port}"
        assert exports["PREFECT_PORT"] == str(prefect_port)
        assert exports["PREFECT_API_URL"] == f"http://127.0.0.1:{prefect_port}/api"
        assert exports["PREFECT_HOME"] == str(state / "prefect-home")
        assert exports["TOPOZARR_STATE"] == str(state)
        assert exports["PG_PORT"] == str(pg_port)
        # the database's password is in no export, record, log or output: the server's environment only
        password = (state / "postgres" / "password").read_text()
        assert len(password) >= 32 and (state / "postgres" / "password").stat().st_mode & 0o077 == 0
        leaked = [p.name for p in [*state.glob("*.env"), *(state / "logs").glob("*")]
                  if password in p.read_text(errors="replace")]
        assert password not in up.stdout + up.stderr and not leaked, leaked
        assert "DASK_SCHEDULER_ADDRESS" not in exports  # SKIP_DASK: nothing recorded for it
        assert (state / "stack.env").read_text().splitlines()[1:] == up.stdout.splitlines()[1:]

        new_shell = _fresh_env(state)
        s3 = _run(["infra/s3.sh", "status"], new_shell)
        assert s3.returncode == 0 and s3.stdout.strip().endswith(f"at http://127.0.0.1:{s3_port}"), s3
        env = _run(["infra/s3.sh", "env"], new_shell).stdout
        assert f"export S3_PORT={s3_port}\n" in env and f"export AWS_ENDPOINT_URL=http://127.0.0.1:{s3_port}\n" in env
        server = _run(["infra/prefect-server.sh", "status"], new_shell)
        assert server.returncode == 0, server
        # the settings the script gives the server reach its process (a comment inside the backslash
        # continuation once cut PREFECT_UI_API_URL off the command)
        server_env = _process_env(int((state / "prefect-server.pid").read_text()))
        assert server_env.get("PREFECT_UI_API_URL") == f"http://127.0.0.1:{prefect_port}/api", server_env
        assert server_env.get("PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS") == "5"
        assert server_env.get("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", "").endswith("lease_storage.filesystem")
        # ... and the server runs on the PostgreSQL of the stack, which holds its tables
        assert server_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == (
            f"postgresql+asyncpg://prefect:{password}@127.0.0.1:{pg_port}/prefect")
        pg = _run(["infra/postgres.sh", "status"], new_shell)
        assert pg.returncode == 0 and f"accepting connections on 127.0.0.1:{pg_port}" in pg.stdout, pg
        tables = _run(["bash", "-c", 'PGPASSWORD="$(cat "$0")" "$(ls -d /usr/lib/postgresql/*/bin | sort -V | '
                       'tail -n 1)/psql" -h 127.0.0.1 -p "$1" -U prefect -d prefect -tAc "SELECT count(*) FROM '
                       'information_schema.tables WHERE table_name = \'flow_run\'"',
                       str(state / "postgres" / "password"), str(pg_port)], new_shell)
        assert tables.stdout.strip() == "1", tables
        assert f"healthy at http://127.0.0.1:{prefect_port}/api/health" in server.stdout
        env = _run(["infra/prefect-server.sh", "env"], new_shell).stdout
        assert f"export PREFECT_API_URL=http://127.0.0.1:{prefect_port}/api\n" in env
        assert _run(["infra/dask-cluster.sh", "status"], new_shell).returncode == 3
        assert _run(["infra/worker.sh", "status"], new_shell).returncode == 3

        # a stale variable in the environment does not hide the running service; it is reported
        stale = _run(["infra/s3.sh", "status"], _fresh_env(state, S3_PORT="5555"))
        assert stale.returncode == 0 and f"at http://127.0.0.1:{s3_port}" in stale.stdout
        assert f"S3_PORT=5555 ignored: s3 is running with S3_PORT={s3_port}" in stale.stderr

        # `source .state/stack.env` gives a new shell the clients' settings; setup-prefect.sh created
        # exactly one limit: the task concurrency limit the tiles hold
        probe = _run(["bash", "-c", f'source "{state}/stack.env" && exec "$VENV_PY" -c "$0"', """
import os
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as c:
    print(os.environ["PREFECT_API_URL"], os.environ["AWS_ENDPOINT_URL"], c.read_work_pool("topozarr-pool").type,
          sorted((g.name, g.limit) for g in c.read_global_concurrency_limits(limit=100)))
"""], _fresh_env(state, VENV_PY=sys.executable), timeout=120)
        assert probe.returncode == 0, probe.stderr
        assert probe.stdout.split(maxsplit=3) == [
            f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{s3_port}", "process",
            "[('tag:topozarr-writes', 3)]\n"], probe.stdout
    finally:
        down = _run(["infra/down.sh"], _fresh_env(state), timeout=120)
    assert down.returncode == 0, down.stderr
    assert _run(["infra/s3.sh", "status"], _fresh_env(state)).returncode == 3
    assert _run(["infra/prefect-server.sh", "status"], _fresh_env(state)).returncode == 3
    assert _run(["infra/postgres.sh", "status"], _fresh_env(state)).returncode == 3
    assert not list(state.glob("*.env")) and not list(state.glob("*.pid"))  # records and stack.env gone
