"""Integration fixtures: a real edge process (uvicorn in its own process) on a free port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.auth_helpers import send_admin_token_by_default, with_test_secret

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings_env(settings: object) -> dict[str, str]:
    """Turn a Settings object into the environment a child process reads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ES_")}
    for name, value in settings.model_dump().items():  # type: ignore[attr-defined]
        if value is None:  # unset optional settings stay unset (str(None) would be read as "None")
            continue
        if hasattr(value, "get_secret_value"):  # SecretStr dumps as '**********'
            value = value.get_secret_value()
        if isinstance(value, list | dict):  # lists are read back as JSON
            value = json.dumps(value)
        if name == "kafka_bootstrap_servers":
            env["KAFKA_BOOTSTRAP_SERVERS"] = str(value)
        else:
            env[f"ES_{name.upper()}"] = str(value)
    return with_test_secret(env)  # the suite runs with authentication on (tests/auth_helpers.py)


@pytest.fixture(autouse=True)
def _admin_token_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send the admin token from every httpx client unless a test names its own credential."""
    send_admin_token_by_default(monkeypatch)


@dataclass
class Proc:
    """A child process with its log file, for tests that start services."""

    popen: subprocess.Popen
    log_path: Path
    url: str = ""
    extra: dict = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = 15, timeout: float = 15) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def start_process(args: list[str], env: dict[str, str], log_path: Path) -> Proc:
    """Start a Python module in a child process, logging to a file."""
    out = open(log_path, "ab")
    popen = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Proc(popen, log_path)


def wait_ready(proc: Proc, path: str = "/readyz", timeout: float = 60) -> None:
    """Wait until the process answers 200 on `path`, failing with its log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            pytest.fail(f"process exited with {proc.popen.returncode}:\n{proc.log()[-4000:]}")
        try:
            if httpx.get(proc.url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.stop()
    pytest.fail(f"{proc.url}{path} not ready within {timeout}s:\n{proc.log()[-4000:]}")


@pytest.fixture
def edge_factory(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Return a factory that starts an edge process for given Settings and waits for /readyz."""
    procs: list[Proc] = []

    def start(settings: object, *, port: int | None = None, ready: bool = True, **env_over: str) -> Proc:
        port = port or free_port()
        env = settings_env(settings)
        env.update({"ES_HTTP_PORT": str(port), **env_over})
        proc = start_process(["-m", "app"], env, tmp_path / f"edge-{port}-{len(procs)}.log")
        proc.url = f"http://127.0.0.1:{port}"
        procs.append(proc)
        if ready:
            wait_ready(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()
