"""A running ``kftune serve`` process on 127.0.0.1 and a free port, for the serving tests (the models
come from tests/fixtures/models.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.fixtures.models import NEGATIVE, POSITIVE  # noqa: F401 - re-exported for the tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    name: str
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def start_server(model: Path, log: Path, *args: str, name: str = "nsmc", timeout: float = 120) -> Server:
    """``kftune serve`` in a subprocess on 127.0.0.1 and a free port, once /v2/health/ready answers 200."""
    import httpx

    port = free_port()
    out = log.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "kftune", "serve", "--model", str(model), "--name", name,
                             "--port", str(port), "--threads", "1", *args],
                            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"kftune serve exited {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return Server(url, name, proc, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"kftune serve not ready in {timeout}s:\n{log.read_text()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="module")
def korean_server(korean_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(korean_model, tmp_path_factory.mktemp("serve") / "server.log")
    yield server
    stop_server(server)
