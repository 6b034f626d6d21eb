"""Start and stop the real service the way a user does: `serve run <config>` in its own process group.

Used by the integration tests and by the benchmarks (which time start-up).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from dotenv import dotenv_values

from infergraph.paths import PROJECT_ROOT
from infergraph.testing import DEV_KEY

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "serve.yaml"
DEFAULT_ENV_FILE = PROJECT_ROOT / "configs" / "serve.env"  # what `uv run --env-file configs/serve.env` sets
AUTH = {"Authorization": f"Bearer {DEV_KEY}"}
# What a model of each kind is asked to prove it serves; any other kind is ready once it is listed.
PROBES: dict[str, tuple[str, dict[str, Any]]] = {
    "text-encoder": ("/v1/embeddings", {"input": "ready?"}),
    "reranker": ("/v1/rerank", {"query": "ready?", "documents": ["ready"]}),
}


def serving_only(models: list[str], config: Path = DEFAULT_CONFIG) -> dict[str, Any]:
    """`config` as a dict whose application serves only `models` behind the Router: a smaller
    service for tests and benchmarks (callers adjust the rest and write it out)."""
    cfg: dict[str, Any] = yaml.safe_load(config.read_text())
    app = cfg["applications"][0]
    app["args"]["models"] = list(models)
    if "in_router" in app["args"]:
        app["args"]["in_router"] = [m for m in app["args"]["in_router"] if m in models]
    app["deployments"] = [d for d in app["deployments"] if d["name"] in ("Router", *models)]
    return cfg


def serve_env(env_file: Path | None, workdir: Path) -> dict[str, str]:
    """The environment `serve run` gets: this one, plus `env_file` (it does not override what is set).

    Under HAProxy, Serve's defaults put HAProxy's files under /tmp/haproxy-serve, and its stats, its
    metrics and the fallback Python proxy (SO_REUSEPORT: two instances would share its requests) on
    fixed ports; each instance gets its own here, so several can run side by side.
    """
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    if env_file is not None:
        # `serve run` starts in the checkout (cwd=PROJECT_ROOT below): ${PWD} in the file means that,
        # whatever this process's own PWD is.
        for key, value in dotenv_values(env_file, interpolate=False).items():
            if value is not None:
                env.setdefault(key, value.replace("${PWD}", str(PROJECT_ROOT)))
    env.setdefault("RAY_TMPDIR", str(workdir / "ray"))
    if env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        haproxy = workdir / "haproxy"
        haproxy.mkdir(exist_ok=True)
        env.setdefault("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", str(haproxy / "haproxy.cfg"))
        env.setdefault("RAY_SERVE_HAPROXY_SOCKET_PATH", str(haproxy / "admin.sock"))
        env.setdefault("RAY_SERVE_HAPROXY_SERVER_STATE_BASE", str(haproxy))
        env.setdefault("RAY_SERVE_HAPROXY_SERVER_STATE_FILE", str(haproxy / "server-state"))
        env.setdefault("RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH", str(haproxy / "metrics.sock"))
        env.setdefault("RAY_SERVE_HAPROXY_STATS_PORT", str(free_port()))
        env.setdefault("RAY_SERVE_HAPROXY_METRICS_PORT", str(free_port()))
        env.setdefault("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", str(free_port()))
        env.setdefault("RAY_SERVE_FALLBACK_PROXY_GRPC_PORT", str(free_port()))
    return env


# Below Linux's ephemeral range (32768+), where the OS hands out ports to every connecting socket,
# and above Ray's worker ports (10002-19999): a port found free here stays free until HAProxy or
# Serve binds it (an ephemeral one was once taken by another process in between).
PORT_RANGE = (20000, 32000)


def free_port() -> int:
    """A port free on all interfaces, from `PORT_RANGE`."""
    for _ in range(200):
        port = random.randrange(*PORT_RANGE)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")


@dataclass
class RunningService:
    proc: subprocess.Popen
    base_url: str
    log: Path
    config: Path
    models: list[str]
    startup_s: float = float("nan")

    def stop(self) -> None:
        """SIGTERM (serve run ignores SIGINT in the background), then kill what is left of its group."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def wait_ready(self, timeout_s: float) -> float:
        """Block until `GET /v1/models` lists every configured model and each answers a request of its
        kind (`PROBES`); returns seconds since launch."""
        started = time.monotonic()
        pending = list(self.models)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve run exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"service not ready after {timeout_s:.0f}s:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):  # not up yet
                kinds = self._listed_kinds()
                pending = [m for m in pending if m not in kinds or not self._answers(m, kinds[m])]
                if not pending:
                    break
            time.sleep(0.5)
        return time.monotonic() - started

    def _listed_kinds(self) -> dict[str, str]:
        """Each listed model's kind; empty while the router does not answer yet."""
        r = httpx.get(f"{self.base_url}/v1/models", headers=AUTH, timeout=10)
        if r.status_code != 200:
            return {}
        return {card["id"]: card.get("kind", "") for card in r.json()["data"]}

    def _answers(self, name: str, kind: str) -> bool:
        """One request of the model's kind succeeds; a 500 means broken, and waiting will not help."""
        if kind not in PROBES:
            return True
        route, body = PROBES[kind]
        r = httpx.post(f"{self.base_url}{route}", json={"model": name, **body}, headers=AUTH, timeout=10)
        if r.status_code == 500:
            raise RuntimeError(f"service answers 500: {r.text}\n{self.log_tail()}")
        return r.status_code == 200

    def dashboard_url(self) -> str:
        """Where `serve deploy` reaches this cluster (printed by `ray.init` at start-up)."""
        match = re.search(r"dashboard at \S*?(http://[\w.:]+)", self.log.read_text(errors="replace"))
        return match.group(1) if match else "http://127.0.0.1:8265"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def start_service(
    config: Path = DEFAULT_CONFIG,
    port: int | None = None,
    ready_timeout_s: float = 600,
    env_file: Path | None = DEFAULT_ENV_FILE,
) -> RunningService:
    """Launch `serve run` on a copy of `config` with only the port changed, in the environment of
    `env_file` (None: Serve's defaults); wait until it answers."""
    service = launch_service(config, port, env_file)
    try:
        service.startup_s = service.wait_ready(ready_timeout_s)
    except BaseException:
        service.stop()
        raise
    return service


def launch_service(
    config: Path = DEFAULT_CONFIG, port: int | None = None, env_file: Path | None = DEFAULT_ENV_FILE
) -> RunningService:
    """`start_service` without the wait: for tests of a service that must not come up."""
    cfg = yaml.safe_load(config.read_text())
    port = port or free_port()
    cfg["http_options"]["port"] = port
    workdir = Path(tempfile.mkdtemp(prefix="ig-"))
    cfg_path = workdir / "serve.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    log = workdir / "serve.log"
    env = serve_env(env_file, workdir)
    serve_cli = Path(sys.executable).parent / "serve"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(serve_cli), "run", str(cfg_path)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    models = [m for app in cfg["applications"] for m in app.get("args", {}).get("models", [])]
    return RunningService(proc, f"http://127.0.0.1:{port}", log, cfg_path, models)
