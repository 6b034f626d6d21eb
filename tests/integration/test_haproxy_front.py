"""HAProxy in front of the router (configs/serve.env), as infergraph-haproxy hardens it: its stats
page and Prometheus exporter listen on loopback only, its admin socket is the owner's, and what the
router's HTTP server refuses before the application sees it comes back OpenAI-shaped. (What it
answers itself: tests/unit/test_haproxy_config.py, on the real binary.)"""

from __future__ import annotations

import http.client
import stat
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import psutil

from infergraph.testing.service import RunningService


def haproxy_processes(service: RunningService) -> list[psutil.Process]:
    tree = psutil.Process(service.proc.pid).children(recursive=True)
    found = [p for p in tree if p.name() == "haproxy"]
    assert found, "no HAProxy under serve run: configs/serve.env not applied?"
    return found


def test_haproxy_listens_on_loopback_only(running_service: RunningService):
    listening = {
        (c.laddr.ip, c.laddr.port)
        for p in haproxy_processes(running_service)
        for c in p.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }
    assert len(listening) >= 3  # the service port, the stats page, the Prometheus exporter
    assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening


def test_haproxys_admin_socket_is_the_owners_only(running_service: RunningService):
    config = Path(haproxy_processes(running_service)[0].cmdline()[3])  # haproxy -db -f <config>
    line = next(x for x in config.read_text().splitlines() if x.strip().startswith("stats socket"))
    path = Path(line.split()[2])
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, oct(path.stat().st_mode)


def test_a_method_the_routers_server_does_not_know_gets_an_openai_shaped_400(running_service: RunningService):
    """uvicorn answers an unknown method itself, in plain text; HAProxy replaces that answer."""
    url = urlsplit(running_service.base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request("FOO", "/v1/models")
        reply = conn.getresponse()
        body = reply.read()
    finally:
        conn.close()
    assert reply.status == 400 and reply.getheader("content-type") == "application/json", body
    assert orjson.loads(body)["error"]["type"] == "invalid_request_error"
