"""An error answered before the request's body was read closes the connection (issue "Reliability").

uvicorn reads and drops an unread body to keep a connection alive: a 401 answered at once still made
the router read every byte an unauthenticated client sent, and a chunked body that never ends for as
long as the client kept sending. The router's real error handlers, on a real uvicorn."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI, Request

from infergraph.deployments.errors import ApiError, install_error_handlers
from infergraph.deployments.router import read_json_body
from infergraph.testing.service import free_port

app = FastAPI()
install_error_handlers(app)


@app.post("/refuse")
async def refuse(request: Request) -> dict[str, str]:
    raise ApiError(401, "no key", code="invalid_api_key")  # before the body, as authentication is


@app.post("/bounded")
async def bounded(request: Request) -> dict[str, str]:
    await read_json_body(request, 1024 * 1024)
    raise ApiError(400, "read, then refused", code="invalid_request")


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield server.config.port
    server.should_exit = True
    thread.join(timeout=10)


def send(port: int, path: str, head: str, body_chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """(the answer's first bytes, body bytes the server took before it closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{head}\r\n".encode())
        sent = 0
        with contextlib.suppress(OSError):  # closed by the server
            for chunk in body_chunks:
                s.sendall(chunk)
                sent += len(chunk)
        answer = b""
        with contextlib.suppress(OSError):
            while len(answer) < 4096 and (part := s.recv(4096)):
                answer += part
        return answer, sent


def endless_chunks(limit: int = 200 * 1024 * 1024) -> Iterator[bytes]:
    data = b"\0" * 65536
    for _ in range(limit // len(data)):
        yield b"10000\r\n" + data + b"\r\n"


@pytest.mark.parametrize("path", ["/refuse", "/bounded"])
def test_an_error_before_an_endless_chunked_body_is_read_closes_the_connection(port, path):
    answer, sent = send(port, path, "Transfer-Encoding: chunked\r\n", endless_chunks())
    assert answer.split(b" ")[1] in (b"401", b"413"), answer[:200]
    assert b"connection: close" in answer.lower()
    assert sent < 32 * 1024 * 1024, f"the server read {sent >> 20} MiB of a body it had refused"


def test_a_large_declared_body_refused_unread_closes_the_connection(port):
    size = 50 * 1024 * 1024
    answer, sent = send(
        port, "/refuse", f"Content-Length: {size}\r\n", iter([b"\0" * 65536] * (size // 65536))
    )
    assert answer.startswith(b"HTTP/1.1 401") and b"connection: close" in answer.lower()
    assert sent < 32 * 1024 * 1024


def test_a_small_or_read_body_keeps_the_connection(port):
    answer, _ = send(port, "/refuse", "Content-Length: 2\r\n", iter([b"{}"]))
    assert answer.startswith(b"HTTP/1.1 401") and b"connection: close" not in answer.lower()
    answer, _ = send(port, "/bounded", "Content-Length: 2\r\n", iter([b"{}"]))
    assert answer.startswith(b"HTTP/1.1 400") and b"connection: close" not in answer.lower()
