"""How infergraph's HAProxy process lives and stops: a drain when Serve stops it, not a cut.

Ray Serve stops HAProxy with SIGKILL as soon as a shutdown begins (`serve run` got SIGTERM, `serve
shutdown`), while the router replicas behind it still drain their admitted requests for up to their
graceful-shutdown timeout. The requests in flight lost their connection with no answer, and every
later one found the port closed (docs/reliability.md). So the process Ray starts and kills is not
HAProxy but this supervisor:

    Ray's HAProxyManager -> infergraph-haproxy (the pid Ray holds, signals and kills)
                              `-> watcher (forked, own session: survives that kill)
                                     `-> haproxy (dies with the watcher: PR_SET_PDEATHSIG)

- Ray's graceful reload (the next HAProxy's `-sf <pid>`, or Ray's own SIGUSR1) reaches the old
  HAProxy through both, unchanged: it stops listening and finishes its connections, as before.
- When the pid Ray holds dies (SIGKILL at shutdown, a supervisor's `kill -TERM -- -<pgid>`, an OOM
  kill), the watcher sees its pipe close and drains: every server goes to maintenance through the
  admin socket, so a new request gets HAProxy's 503 (OpenAI-shaped, with Retry-After) instead of a
  refused connection, while the requests already sent to a router are answered. When none is left
  at a server (at least `DRAIN_503_S`, at most `DRAIN_BOUND_S` after the kill), HAProxy soft-stops
  and exits; nothing is left running.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
DRAIN_503_S = 2.0  # new requests get 503 at least this long after the stop (clients see why)
DRAIN_BOUND_S = 30.0  # admitted requests get at most this long to finish (Serve's replicas: 20 s)
EXIT_BOUND_S = 10.0  # after the soft stop, then SIGTERM
SERVER_ROW = "2"  # `show stat`'s `type` column: 0 frontend, 1 backend, 2 server


def die_with_parent(sig: int) -> None:
    """Ask the kernel to send `sig` when the parent dies (kept across exec); runs in the child."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the guard was set
        os._exit(1)


def admin(socket_path: Path, command: str, timeout_s: float = 2.0) -> str:
    """One command on HAProxy's admin socket (it answers, then closes)."""
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
    lines = stat_csv.lstrip("# ").splitlines()
    return [row for row in csv.DictReader(lines) if row.get("type") == SERVER_ROW]


def drain(haproxy: subprocess.Popen[bytes], socket_path: Path) -> None:
    """Answer new requests 503, let the ones at a router finish, then stop HAProxy (bounded)."""
    start = time.monotonic()
    try:
        names = [f"{row['pxname']}/{row['svname']}" for row in servers(admin(socket_path, "show stat"))]
        if names:
            admin(socket_path, "; ".join(f"disable server {name}" for name in names))
    except OSError:
        names = []  # no admin socket: nothing to drain through, stop as Ray would have
    while names and haproxy.poll() is None and time.monotonic() - start < DRAIN_BOUND_S:
        try:
            busy = sum(int(row["scur"] or 0) for row in servers(admin(socket_path, "show stat")))
        except OSError:
            break
        if busy == 0 and time.monotonic() - start >= DRAIN_503_S:
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        haproxy.send_signal(signal.SIGUSR1)  # soft stop: unbind, close idle connections, exit
    try:
        haproxy.wait(timeout=EXIT_BOUND_S)
    except subprocess.TimeoutExpired:
        haproxy.terminate()
        haproxy.wait()


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def watch(command: list[str], socket_path: Path, parent_alive: int) -> int:
    """The watcher: run HAProxy, pass the reload signal on, drain it when `parent_alive` closes."""
    os.setsid()  # a signal to the supervisor's process group does not cut HAProxy short
    haproxy = subprocess.Popen(command, preexec_fn=lambda: die_with_parent(signal.SIGTERM))
    signal.signal(signal.SIGUSR1, lambda *_: haproxy.send_signal(signal.SIGUSR1))
    while haproxy.poll() is None:
        readable, _, _ = select.select([parent_alive], [], [], 0.2)
        if readable and not os.read(parent_alive, 1):  # EOF: the supervisor is gone
            drain(haproxy, socket_path)
    return exit_code(haproxy.wait())


def supervise(command: list[str], socket_path: Path) -> int:
    """The process Ray holds: fork the watcher, pass Ray's signals to it, exit with it."""
    parent_alive, keep_open = os.pipe()
    watcher = os.fork()
    if watcher == 0:
        os.close(keep_open)
        code = 1
        try:
            code = watch(command, socket_path, parent_alive)
        finally:
            os._exit(code)
    os.close(parent_alive)
    signal.signal(signal.SIGUSR1, lambda *_: os.kill(watcher, signal.SIGUSR1))
    _, status = os.waitpid(watcher, 0)
    return exit_code(os.waitstatus_to_exitcode(status))


def run(command: list[str], socket_path: Path | None) -> None:
    """Become HAProxy's supervisor (Linux, with an admin socket), else HAProxy itself."""
    if not sys.platform.startswith("linux"):
        os.execv(command[0], command)
    if socket_path is None:  # nothing to drain through: at least never outlive Ray's actor
        die_with_parent(signal.SIGTERM)
        os.execv(command[0], command)
    sys.exit(supervise(command, socket_path))
