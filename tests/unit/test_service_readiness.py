"""`RunningService.wait_ready` against a stub HTTP server: listed first, then probed by kind."""

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from infergraph.testing import DEV_KEY
from infergraph.testing.service import RunningService

CARDS = [
    {"id": "enc", "kind": "text-encoder"},
    {"id": "rr", "kind": "reranker"},
    {"id": "other", "kind": "something-new"},
]


class Stub(ThreadingHTTPServer):
    listed_after = 2  # GET /v1/models answers 503 this many times first
    post_status = 200
    gets = 0
    posts: list[tuple[str, dict[str, Any], str]] = []


class Handler(BaseHTTPRequestHandler):
    server: Stub

    def _send(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        self.server.gets += 1
        if self.server.gets <= self.server.listed_after:
            return self._send(503, {"error": "starting"})
        self._send(200, {"object": "list", "data": CARDS})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.posts.append((self.path, body, self.headers["Authorization"]))
        self._send(self.server.post_status, {"error": "broken"} if self.server.post_status == 500 else {})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[Stub]:
    server = Stub(("127.0.0.1", 0), Handler)
    server.posts = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.fixture
def service(stub: Stub, tmp_path) -> Iterator[RunningService]:
    proc = subprocess.Popen(["sleep", "60"])
    log = tmp_path / "serve.log"
    log.write_text("serve run log\n")
    url = f"http://127.0.0.1:{stub.server_address[1]}"
    yield RunningService(proc, url, log, tmp_path / "serve.yaml", ["enc", "rr", "other"])
    proc.kill()
    proc.wait()


def test_ready_once_listed_and_each_kind_answers(stub, service):
    service.wait_ready(timeout_s=30)
    assert stub.gets == stub.listed_after + 1
    auth = f"Bearer {DEV_KEY}"
    assert stub.posts == [
        ("/v1/embeddings", {"model": "enc", "input": "ready?"}, auth),
        ("/v1/rerank", {"model": "rr", "query": "ready?", "documents": ["ready"]}, auth),
    ]  # an unknown kind is ready once listed


def test_a_500_is_broken_not_starting(stub, service):
    stub.post_status = 500
    with pytest.raises(RuntimeError, match="(?s)service answers 500.*serve run log"):
        service.wait_ready(timeout_s=30)


def test_a_model_never_listed_times_out_with_the_log(stub, service):
    service.models.append("missing")
    with pytest.raises(TimeoutError, match="not ready after 2s:\nserve run log"):
        service.wait_ready(timeout_s=2)
