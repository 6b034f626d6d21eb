"""When Serve stops HAProxy, admitted requests are answered and new ones get 503 (issue "Reliability",
outcome 3, SIGTERM to `serve run`): Ray kills the process it started at once, which used to cut the
requests in flight. The real HAProxy that ray[serve] ships, through `infergraph-haproxy`, in front of
a slow stand-in router."""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import psutil
import pytest

from infergraph.deploy.haproxy import harden_file
from infergraph.deploy.haproxy_process import DRAIN_503_S, EXIT_BOUND_S
from infergraph.testing.service import free_port

SLOW_S = 1.5


class StandInRouter(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(SLOW_S)
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def router() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), StandInRouter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def config(folder: Path, port: int, router_port: int) -> Path:
    path = folder / "haproxy.cfg"
    path.write_text(
        f"""global
    stats socket {folder / "admin.sock"} mode 666 level admin
    hard-stop-after 120s
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend http_frontend
    bind 127.0.0.1:{port}
    default_backend router
backend router
    server router-1 127.0.0.1:{router_port}
"""
    )
    harden_file(path)
    return path


def get(port: int, path: str, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        conn.close()


def start(tmp_path: Path, router_port: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cfg = config(tmp_path, port, router_port)
    proc = subprocess.Popen([sys.executable, "-m", "infergraph.deploy.haproxy", "-db", "-f", str(cfg)])
    for _ in range(100):
        try:
            if get(port, "/")[0] == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("HAProxy did not start")


def in_background(port: int, path: str) -> dict[str, object]:
    result: dict[str, object] = {}

    def send() -> None:
        try:
            result["status"] = get(port, path)[0]
        except OSError as exc:
            result["error"] = repr(exc)

    thread = threading.Thread(target=send)
    thread.start()
    result["thread"] = thread
    return result


def test_when_serve_kills_haproxy_admitted_requests_finish_and_new_ones_get_503(tmp_path, router):
    proc, port = start(tmp_path, router)
    descendants = psutil.Process(proc.pid).children(recursive=True)  # HAProxy, wherever it runs
    slow = in_background(port, "/slow")
    time.sleep(0.3)  # the slow request is at the router
    killed = time.monotonic()
    proc.kill()  # what Ray's HAProxyManager does when Serve shuts down
    proc.wait()

    refusals = []
    while time.monotonic() - killed < DRAIN_503_S - 0.5:
        status, headers, body = get(port, "/")
        if status == 503:
            refusals.append((headers, orjson.loads(body)))
            break
        time.sleep(0.05)
    assert refusals, "a new request during the stop should get 503, not a refused connection"
    headers, body = refusals[0]
    assert headers["retry-after"] == "1" and body["error"]["code"] == "service_unavailable"

    slow["thread"].join(timeout=10)  # type: ignore[attr-defined]
    assert slow.get("status") == 200, f"the admitted request was cut: {slow}"

    gone, alive = psutil.wait_procs(descendants, timeout=DRAIN_503_S + EXIT_BOUND_S)
    assert not alive, f"left running: {[p.pid for p in alive]}"
    with pytest.raises(OSError):
        get(port, "/", timeout=2)  # and the port is closed


def test_a_reload_signal_still_stops_the_old_haproxy_gracefully(tmp_path, router):
    """Ray's graceful reload: the next HAProxy sends SIGUSR1 to the pid Ray holds (`-sf`)."""
    proc, port = start(tmp_path, router)
    slow = in_background(port, "/slow")
    time.sleep(0.3)
    proc.send_signal(signal.SIGUSR1)
    time.sleep(0.3)
    with pytest.raises(OSError):
        get(port, "/", timeout=2)  # it stopped listening (the new HAProxy has the port)
    slow["thread"].join(timeout=10)  # type: ignore[attr-defined]
    assert slow.get("status") == 200
    assert proc.wait(timeout=10) == 0
