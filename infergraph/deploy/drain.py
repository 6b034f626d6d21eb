"""`infergraph-drain`: take this host's HAProxy out of service gently, before Serve is stopped.

Ray Serve stops HAProxy with SIGKILL as soon as a shutdown begins (`serve run` got SIGTERM, `serve
shutdown`, a pod stops), while the router replicas behind it still finish their admitted requests:
those lost their connection with no answer, and every later request found the port closed
(docs/reliability.md). Ray requires the process it starts to be HAProxy itself (it compares the
admin socket's Pid with it), so nothing can stand between the two to soften that kill. Instead, run
this first (a pod's `preStop` hook does; by hand: `infergraph-drain && kill -TERM <serve run>`):

- every HAProxy server (router replica) on this host goes to maintenance through the admin socket,
  so a new request gets HAProxy's own 503, OpenAI-shaped with Retry-After
  (`infergraph-haproxy`'s error files), not a refused connection;
- it waits until no request is left at a router (at least `--min-s`, at most `--timeout`): the
  admitted ones are answered.

HAProxy keeps answering 503 until Serve stops it. Exit status 0 when drained, 1 if requests were
still at a router at the timeout, 2 if no HAProxy was found.
"""

from __future__ import annotations

import argparse
import csv
import re
import socket
import sys
import time
from pathlib import Path

import psutil

SERVER_ROW = "2"  # `show stat`'s `type` column: 0 frontend, 1 backend, 2 server


def admin(socket_path: Path, command: str, timeout_s: float = 2.0) -> str:
    """One command on HAProxy's admin socket (non-interactive: it answers, then closes)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout_s)
        conn.connect(str(socket_path))
        conn.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def servers(stat_csv: str) -> list[dict[str, str]]:
    """The server rows of `show stat`."""
    rows = csv.DictReader(stat_csv.lstrip("# ").splitlines())
    return [row for row in rows if row.get("type") == SERVER_ROW]


def in_flight(socket_path: Path) -> int:
    """Requests at a server now: sessions open to the routers."""
    return sum(int(row["scur"] or 0) for row in servers(admin(socket_path, "show stat")))


def admin_socket(config: str) -> Path | None:
    """The path of the `stats socket` in an HAProxy configuration."""
    match = re.search(r"^\s*stats socket\s+(\S+)", config, re.MULTILINE)
    return Path(match.group(1)) if match else None


def running_sockets() -> list[Path]:
    """The admin sockets of the HAProxy processes running here (from their `-f` configuration)."""
    found: set[Path] = set()
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] != "haproxy" or "-f" not in cmdline[:-1]:
            continue
        config = Path(cmdline[cmdline.index("-f") + 1])
        try:
            path = admin_socket(config.read_text())
        except OSError:
            continue
        if path is not None and path.exists():
            found.add(path)
    return sorted(found)


def take_out_of_service(socket_path: Path) -> list[str]:
    """Put every server in maintenance: HAProxy answers new requests itself (503)."""
    names = [f"{row['pxname']}/{row['svname']}" for row in servers(admin(socket_path, "show stat"))]
    if names:
        admin(socket_path, "; ".join(f"disable server {name}" for name in names))
    return names


def drain(sockets: list[Path], min_s: float, timeout_s: float) -> tuple[bool, int, float]:
    """Take every HAProxy out of service, wait for the admitted requests; (drained, left, seconds)."""
    start = time.monotonic()
    for path in sockets:
        take_out_of_service(path)
    while True:
        left = sum(in_flight(path) for path in sockets)
        took = time.monotonic() - start
        if left == 0 and took >= min_s:
            return True, 0, took
        if took >= timeout_s:
            return False, left, took
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", type=Path, action="append", help="admin socket (default: every HAProxy here)")
    ap.add_argument("--min-s", type=float, default=1.0, help="answer new requests 503 at least this long")
    ap.add_argument("--timeout", type=float, default=25.0, help="give admitted requests at most this long")
    a = ap.parse_args(argv)
    sockets = a.socket or running_sockets()
    if not sockets:
        print("infergraph-drain: no HAProxy found", file=sys.stderr)
        return 2
    drained, left, took = drain(sockets, a.min_s, a.timeout)
    state = "drained" if drained else f"timed out with {left} requests still at a router"
    print(f"infergraph-drain: {len(sockets)} HAProxy out of service, {state} in {took:.1f} s")
    return 0 if drained else 1


if __name__ == "__main__":
    sys.exit(main())
