"""Debian commands the tests and benchmarks need (Festival, kubectl, Prometheus), installed on first use
where we may (root with apt-get), so that the test command sets up a fresh machine by itself."""

from __future__ import annotations

import os
import shutil
import subprocess


def ensure_command(command: str, packages: tuple[str, ...]) -> str | None:
    """The path of `command`, after `apt-get install packages` when it is missing and we are root;
    None when it is still missing (the caller says how to install it)."""
    path = shutil.which(command)
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "-q", *packages], env=env, capture_output=True, check=False
        )
        path = shutil.which(command)
    return path
