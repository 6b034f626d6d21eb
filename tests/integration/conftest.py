"""Start the real service exactly as a user does (`serve run configs/serve.yaml`), on a free port."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 600  # a fresh machine converts and exports the models on first start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_ready(base_url: str, proc: subprocess.Popen, models: list[str], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    pending = list(models)
    while pending:
        if proc.poll() is not None:
            raise RuntimeError(f"serve run exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"service not ready after {STARTUP_TIMEOUT_S}s:\n{log.read_text()[-4000:]}")
        try:
            r = httpx.post(
                f"{base_url}/v1/embeddings", json={"model": pending[0], "input": "ready?"}, timeout=10
            )
            if r.status_code == 200:
                pending.pop(0)
                continue
        except httpx.HTTPError:
            pass
        time.sleep(1)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (serve run ignores SIGINT in the background), then kill what is left of its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def service():
    """Base URL of a running infergraph started from configs/serve.yaml (only the port changed)."""
    config = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    models = config["applications"][0]["args"]["models"]
    workdir = Path(tempfile.mkdtemp(prefix="igt-"))
    cfg_path = workdir / "serve.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    log = workdir / "serve.log"
    env = {**os.environ, "RAY_TMPDIR": str(workdir / "ray"), "RAY_USAGE_STATS_ENABLED": "0"}
    serve_cli = Path(sys.executable).parent / "serve"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(serve_cli), "run", str(cfg_path)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base_url, proc, models, log)
        yield base_url
    finally:
        stop(proc)
