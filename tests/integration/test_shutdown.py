"""Stopping `serve run` the way a supervisor does, with SIGTERM to its whole process group, leaves
nothing behind: HAProxy (a child of a Ray actor) used to stay bound to the HTTP port, and the next
start could not bind it (reliability issue, defect 10)."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from infergraph.testing.service import serving_only, start_service

pytestmark = pytest.mark.integration

MINILM = "all-MiniLM-L6-v2"


def haproxies(folder: Path) -> list[psutil.Process]:
    """HAProxy processes of one service: their config file is under its `folder` (per Ray node)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any("haproxy" in part for part in cmdline[:2]) and any(a.startswith(str(folder)) for a in cmdline):
            found.append(proc)
    return found


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


def test_sigterm_to_the_process_group_leaves_no_haproxy_on_the_port():
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="igt-ray-"))
    workdir = Path(tempfile.mkdtemp(prefix="ig-stop-"))
    config = serving_only([MINILM])
    config["applications"][0]["args"]["registry"]["default_variant"] = "base"
    path = workdir / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    service = start_service(path)
    try:
        haproxy_cfg = service.config.parent / "haproxy"  # testing/service.py puts HAProxy's files there
        assert haproxies(haproxy_cfg), "no HAProxy found for this service (is serve.env's HAProxy on?)"
        port = int(service.base_url.rsplit(":", 1)[1])
        os.killpg(service.proc.pid, signal.SIGTERM)  # `kill -TERM -- -<pgid>`
        service.proc.wait(timeout=60)
        deadline = time.monotonic() + 15
        while (left := haproxies(haproxy_cfg)) or not port_is_free(port):
            assert time.monotonic() < deadline, (
                f"left running: {[p.pid for p in left]}, port free: {port_is_free(port)}"
            )
            time.sleep(0.5)
    finally:
        for proc in haproxies(service.config.parent / "haproxy"):
            proc.kill()  # what the test found, so that it does not linger after a failure
        service.stop()
