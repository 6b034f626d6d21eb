"""HAProxy in front of the router (configs/serve.env), as infergraph-haproxy hardens it: its stats
page and Prometheus exporter listen on loopback only and its admin socket is the owner's. (What it
answers itself: tests/unit/test_haproxy_config.py, on the real binary.)"""

from __future__ import annotations

import stat
from pathlib import Path

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
