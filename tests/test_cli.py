"""The ``onyx-wa`` command as users run it: real processes, real signals, one-line errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onyx_wa.broker import free_port

CLI = [sys.executable, "-m", "onyx_wa.cli"]


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("onyx-wa: error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """A private data dir and no inherited configuration."""
    env = {"ONYX_WA_DATA_DIR": str(tmp_path / "data"), "ONYX_WA_LOG_LEVEL": "WARNING"}
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "ONYX_WA_ENCRYPTION_KEY"):
        env[name] = ""
    return env


def test_help_lists_every_command():
    result = run("--help")
    assert result.returncode == 0
    for command in ("up", "demo", "broker", "worker", "ingress", "sim", "db", "bots", "bench"):
        assert command in result.stdout


def test_bad_setting_is_one_line_naming_the_variable(home):
    one_line_error(
        run("topics", "list", env=home | {"ONYX_WA_PARTITIONS": "many"}), "ONYX_WA_PARTITIONS"
    )


def test_unreachable_broker_is_one_line(home):
    port = free_port()
    result = run("topics", "create", env=home | {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"})
    one_line_error(result, f"127.0.0.1:{port}", "unreachable")


def test_unreachable_database_is_one_line_with_the_password_masked(home):
    url = "postgresql://admin:hunter2@127.0.0.1:1/onyx"
    line = one_line_error(run("db", "upgrade", env=home | {"DATABASE_URL": url}), "unreachable")
    assert "hunter2" not in line


def test_production_setup_without_a_key_refuses_to_start(home, db):
    if db.kind != "postgresql":
        pytest.skip("needs a non-embedded database (PostgreSQL not reachable here)")
    run("db", "upgrade", env=home | {"DATABASE_URL": db.url})
    one_line_error(
        run("bots", "list", env=home | {"DATABASE_URL": db.url}), "ONYX_WA_ENCRYPTION_KEY"
    )


def test_bots_add_and_list_never_show_secrets(home):
    assert run("db", "upgrade", env=home).returncode == 0
    added = run(
        "bots", "add", "--tenant", "acme", "--phone-number-id", "1234567",
        "--app-secret", "app-secret-xyz", "--verify-token", "verify-xyz",
        "--access-token", "token-xyz", env=home,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    listed = run("bots", "list", "--json", env=home)
    assert listed.returncode == 0 and "1234567" in listed.stdout
    for secret in ("app-secret-xyz", "verify-xyz", "token-xyz"):
        assert secret not in listed.stdout + listed.stderr + added.stdout + added.stderr
    dup = run(
        "bots", "add", "--tenant", "acme", "--phone-number-id", "1234567",
        "--app-secret", "s", "--verify-token", "v", "--access-token", "a", env=home,
    )  # fmt: skip
    one_line_error(dup, "1234567", "already exists")
    db_file = Path(home["ONYX_WA_DATA_DIR"]) / "onyx-wa.sqlite3"
    assert b"app-secret-xyz" not in db_file.read_bytes()


def test_broker_port_in_use_is_refused(home):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        one_line_error(
            run("broker", env=home | {"ONYX_WA_BROKER_PORT": str(port)}), str(port), "in use"
        )


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _child_running(pid: int, command: str) -> int:
    """The child of ``pid`` running ``onyx-wa <command>``."""
    for child in _children(pid):
        args = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        if command.encode() in args and _state(child) != "Z":
            return child
    raise AssertionError(f"no child runs {command!r}")


def _gone(pids: list[int], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and _state(p) != "Z"]
        if not alive:
            return True
        time.sleep(0.1)
    return False


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (FileNotFoundError, IndexError):
        return "X"


def test_broker_command_creates_topics_and_stops_cleanly_on_sigterm(home):
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "broker"],
        env={**os.environ, **home, "ONYX_WA_BROKER_PORT": str(port), "ONYX_WA_PARTITIONS": "3"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "broker ready" in line and "3 partitions" in line, line + proc.stderr.read()
        children = _children(proc.pid)
        assert children, "Tansu should run as a child"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert _gone(children)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.timeout(240)
def test_up_runs_the_stack_and_ctrl_c_stops_all_of_it(home):
    ports = {
        "ONYX_WA_BROKER_PORT": free_port(),
        "ONYX_WA_INGRESS_PORT": free_port(),
        "ONYX_WA_SIM_PORT": free_port(),
        "ONYX_WA_WORKER_WEB_PORT": free_port(),
    }
    env = {**os.environ, **home, **{k: str(v) for k, v in ports.items()}, "ONYX_WA_PARTITIONS": "2"}
    proc = subprocess.Popen(
        [*CLI, "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        assert "onyx-wa up:" in line, line + proc.stderr.read()
        import urllib.request

        for port in (ports["ONYX_WA_INGRESS_PORT"], ports["ONYX_WA_SIM_PORT"]):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                assert resp.status == 200
        descendants = _children(proc.pid)
        assert len(descendants) >= 4  # broker, worker, ingress, sim
        # a worker that exits (kill -9 here; a crash or undelivered records in life) is
        # restarted, as a supervisor would, and the stack goes on
        worker_url = f"http://127.0.0.1:{ports['ONYX_WA_WORKER_WEB_PORT']}/healthz"
        worker = _child_running(proc.pid, "worker")
        os.kill(worker, signal.SIGKILL)
        line = proc.stdout.readline()
        assert "the worker exited" in line and "restarting it (1/5)" in line, line
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(worker_url, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the restarted worker never answered"
            time.sleep(0.3)
        assert _child_running(proc.pid, "worker") != worker
        descendants = _children(proc.pid)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert _gone(descendants)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.timeout(240)
def test_demo_exits_zero_with_every_reply_exactly_once(home):
    result = run("demo", env=home, timeout=200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "all replies arrived exactly once" in result.stdout
    assert result.stdout.count("✔") == 6


def test_ops_commands_refuse_an_unreachable_broker_in_one_line(home):
    env = home | {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    one_line_error(run("lag", env=env), "unreachable")
    one_line_error(
        run(
            "replay",
            "--topic",
            "wa.inbound",
            "--from",
            "-1h",
            "--to",
            "now",
            "--export",
            "x.jsonl",
            env=env,
        ),
        "unreachable",
    )
    one_line_error(
        run("replay", "--topic", "wa.inbound", "--from", "-1h", "--to", "now", env=home),
        "exactly one",
    )
