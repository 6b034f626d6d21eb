"""HAProxy in front of the router (configs/serve.env), as infergraph-haproxy hardens it: its stats
page and Prometheus exporter listen on loopback only, its admin socket is the owner's, and what it
answers itself is an OpenAI-shaped error."""

from __future__ import annotations

import socket
import stat
from pathlib import Path
from urllib.parse import urlparse

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


def test_a_request_haproxy_cannot_parse_gets_an_openai_shaped_400(service: str):
    url = urlparse(service)
    with socket.create_connection((url.hostname, url.port), timeout=10) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n")
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, body = reply.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 400")
    assert orjson.loads(body)["error"]["code"] == "bad_http_request"
