"""CPU seconds of a process tree, split by role (proxy, router, each model replica, Ray itself).

This is how the benchmark shows where serving overhead goes on a small machine.
"""

from __future__ import annotations

import psutil


def role_of(proc: psutil.Process) -> str:
    try:
        title = " ".join(proc.cmdline())
    except psutil.Error:
        return "gone"
    if "ProxyActor" in title:
        return "proxy"
    if "ServeReplica:" in title:
        return "replica:" + title.split("ServeReplica:", 1)[1].split()[0].split(":")[-1]
    if "ServeController" in title:
        return "controller"
    return "ray+other"


class CpuByRole:
    """Snapshot CPU times of every process under `root_pid`; diff two snapshots by role."""

    def __init__(self, root_pid: int) -> None:
        self.root = psutil.Process(root_pid)

    def snapshot(self) -> dict[tuple[int, float], tuple[str, float]]:
        snap = {}
        for p in [self.root, *self.root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                snap[(p.pid, p.create_time())] = (role_of(p), t.user + t.system)
            except psutil.Error:
                continue
        return snap

    @staticmethod
    def diff(before: dict, after: dict) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, (role, cpu) in after.items():
            out[role] = out.get(role, 0.0) + cpu - before.get(key, (role, 0.0))[1]
        return out
