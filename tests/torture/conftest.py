"""Shared pieces of the torture suite: small filesystems, a real Redis, a client that
creates links over HTTP, and a record of the figures each fault test measured.

The figures land in test-output/torture-figures.json; docs/reliability.md quotes them.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess  # nosec B404: the tests mount filesystems and start real servers
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from ops import processes
from tests.servers import REPO, free_port, unavailable

FIGURES = REPO / "test-output" / "torture-figures.json"
Record = Callable[[str, Any], None]


@pytest.fixture
def record_figure(request: pytest.FixtureRequest) -> Record:
    """Save a measured figure under '<test name>.<what>' for docs/reliability.md."""
    def record(what: str, value: Any) -> None:
        FIGURES.parent.mkdir(exist_ok=True)
        figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
        figures[f"{request.node.name}.{what}"] = value
        FIGURES.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return record


def mount_tmpfs(where: Path, size: str) -> None:
    """Mount a tmpfs of the given size, or skip the test saying why it cannot."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    where.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755",  # nosec
                             "tmpfs", str(where)], capture_output=True, text=True, check=False)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")


def remount(where: Path, mode: str) -> None:
    """Remount a tmpfs read-only ("ro") or read-write ("rw")."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True)  # nosec


@pytest.fixture
def small_fs() -> Iterator[Path]:
    """A 2 MB tmpfs under /tmp that any user can traverse; unmounted afterwards."""
    root = Path(tempfile.mkdtemp(prefix="shortener-torture-"))
    root.chmod(0o755)
    mount_point = root / "fs"
    mount_tmpfs(mount_point, "2m")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)  # nosec
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A real, throwaway Redis on a free loopback port (skipped where it is not installed,
    unless REQUIRE_REDIS=1)."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        unavailable("redis", "redis-server is not installed (.ci/run installs it)")
    port = free_port()
    proc = processes.spawn([binary, "--port", str(port), "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", "no"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("redis-server did not answer PING within 10 s")
        yield f"redis://127.0.0.1:{port}"
    finally:
        processes.stop(proc)


def create(base_url: str, url: str, code: str | None = None,
           session: requests.Session | None = None, timeout: float = 10) -> requests.Response:
    """POST /api/links as a script would."""
    body = {"url": url} if code is None else {"url": url, "code": code}
    return (session or requests).post(f"{base_url}/api/links", json=body, timeout=timeout)


def resolve(base_url: str, code: str, session: requests.Session | None = None) -> str | None:
    """Where GET /<code> redirects to, or None if it does not."""
    response = (session or requests).get(f"{base_url}/{code}", allow_redirects=False, timeout=10)
    return response.headers.get("Location") if response.status_code == 302 else None
