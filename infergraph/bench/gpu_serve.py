"""Issue #16 through Ray Serve itself: the real encoder deployment, `num_gpus: 1` replicas, 1 vs N GPUs.

infergraph/bench/gpu_scaling.py measured one plain process per GPU because Ray was not on the lent
GPU machine. This runs Ray there: a local cluster, `TextEncoderDeployment` bound as `bind_encoder` binds it
with configs/serve-gpu.yaml's settings for all-MiniLM-L6-v2 (user_config, max_ongoing_requests,
LeastTimeRouter, the app's env vars; engine torch + INFERGRAPH_DEVICE=cuda: the packed fp16
`VarlenEngine`) except `ray_actor_options.num_gpus: 1` and `num_replicas` 1, then N. Load comes
through deployment handles (`handle.run.remote([Job(EmbedWork(texts))])`, as the router calls it;
no HTTP, whose proxy would be the bottleneck) from several client actors, each call 256 sentences
of the length-sorted corpus:

* throughput: closed loop, a fixed number of calls in flight, sentences completed in a window;
* latency: open-loop Poisson arrivals at one offered load (fractions of the 1-replica rate), the
  same load for every replica count; p50 / p99 from the scheduled arrival to the answer;
* check: every call's vectors against the CPU FP32 reference (cosine), the replicas' `info()`.

Ray does not install there (no registry), so it travels in a carry folder: the trimmed Ray wheel
(tar.xz, ~31 MB) plus the wheels ray[serve] and the deployments import that the image lacks. Here:

    uv run python -m infergraph.bench.gpu_runtime prepare --out .gpu_carry  # weights + reference
    python3 -m infergraph.bench.gpu_serve prepare-ray --out .raycarry        # [--ray-wheel X.whl]
    printf '/.raycarry/\\n/.gpu_carry/\\n' >> .git/info/exclude

Both folders and the tree exceed the 64 MiB a device call carries, so two calls back to back on
one warm machine (it keeps /tmp for ~30 s after a call; `run` kind nvidia-h200-x2):

    1. carry [".raycarry"]: python3 -m infergraph.bench.gpu_serve install-ray --carry .raycarry \\
           --target /tmp/site && PYTHONPATH=/tmp/site:$PWD python3 -m infergraph.bench.gpu_serve ray-check
    2. carry [".gpu_carry"]: test -d /tmp/site/ray || exit 3; PYTHONPATH=/tmp/site:$PWD \\
           python3 -m infergraph.bench.gpu_serve run --model-dir .gpu_carry/model \\
           --reference .gpu_carry/reference.npy --replicas 1 2 --seconds 4 \\
           --env TOKENIZERS_PARALLELISM=true --out-dir $OUT

`--env` adds a lever: the same deployment with those replica env vars over serve-gpu.yaml's. The
`tokenize` rows time what `embed` does before batching: with the tokenizer's threads off (as
serve-gpu.yaml had it first) one call of 256 took ~20 ms on the H200 box, which held a replica near
10k sentences/s whatever the GPU did; serve-gpu.yaml now turns them on (8 per replica) and large
requests tokenize in a worker thread. Results: results/gpu/serve*.jsonl, docs/gpu.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from infergraph.bench.gpu_runtime import cosine, log, row_writer
from infergraph.corpus import load_corpus
from infergraph.paths import PROJECT_ROOT, absolute_tracking_uri, launch_root, project_path

MODEL = "all-MiniLM-L6-v2"
APP = "infergraph"
LOGGING = {"enable_access_log": False, "log_level": "INFO"}  # serve-gpu.yaml's logging_config
CALL = 256  # sentences per handle call: one GPU pass at configs/serve-gpu.yaml's batching
SERVE_CONFIG = "configs/serve-gpu.yaml"
# What `import ray, ray.serve` and infergraph.deployments.encoder import that the GPU image lacks
# (found by importing them here and diffing with KINDS.md's package list), at uv.lock's versions.
# install-ray skips any the machine already has at that version or newer.
CARRIED = [
    "annotated-types",
    "colorful",
    "fastapi",
    "grpcio",
    "grpcio-reflection",
    "jsonschema",
    "jsonschema-specifications",
    "opentelemetry-api",
    "orjson",
    "protobuf",
    "pydantic",
    "pydantic-core",
    "python-multipart",
    "referencing",
    "rpds-py",
    "sniffio",
    "starlette",
    "typing-extensions",
    "typing-inspection",
    "uvicorn",
    "watchfiles",
    "wcwidth",
]
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "manylinux1_x86_64")
DROPPED = ("ray/jars/", ".js.map")  # Java workers and dashboard source maps: unused, ~48 MB


# --- prepare-ray (here) -------------------------------------------------------------------------
def locked_versions(names: list[str]) -> dict[str, str]:
    import tomllib

    lock = tomllib.loads((PROJECT_ROOT / "uv.lock").read_text())
    found: dict[str, str] = {}
    for pkg in lock["package"]:
        found.setdefault(pkg["name"], pkg["version"])  # several versions (markers): the first
    missing = [n for n in names if n not in found]
    if missing:
        raise KeyError(f"not in uv.lock: {missing}")
    return {n: found[n] for n in names}


def pip_download(specs: list[str], dest: Path, python: str) -> None:
    import importlib.util
    import shutil

    pip = (
        [sys.executable, "-m", "pip"] if importlib.util.find_spec("pip") else [shutil.which("pip3") or "pip3"]
    )
    cmd = [*pip, "download", "-q", "--no-deps", "--only-binary=:all:"]  # uv's venv has no pip: pip3
    cmd += ["--python-version", python, "--implementation", "cp", "-d", str(dest)]
    cmd += [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(cmd + specs, check=True)


def prepare_ray(out: Path, ray_wheel: Path | None, python: str) -> None:
    """`out`/ray.tar.xz (the cp312 Ray wheel, unpacked, less DROPPED) and `out`/wheels/*.whl."""
    import tarfile

    versions = locked_versions(["ray", *CARRIED])
    (out / "wheels").mkdir(parents=True, exist_ok=True)
    for old in (out / "wheels").glob("*.whl"):
        old.unlink()
    pip_download([f"{n}=={versions[n]}" for n in CARRIED], out / "wheels", python)
    with tempfile.TemporaryDirectory() as tmp:
        if ray_wheel is None:  # 79 MB: downloaded outside `out`, which travels
            pip_download([f"ray=={versions['ray']}"], Path(tmp), python)
            ray_wheel = next(Path(tmp).glob("ray-*.whl"))
        with zipfile.ZipFile(ray_wheel) as zf, tarfile.open(out / "ray.tar.xz", "w:xz", preset=6) as tf:
            for member in zf.infolist():
                if member.is_dir() or any(d in member.filename for d in DROPPED):
                    continue
                info = tarfile.TarInfo(member.filename)
                info.size = member.file_size
                info.mode = (member.external_attr >> 16) & 0o777 or 0o644  # keeps gcs_server, raylet +x
                with zf.open(member) as f:
                    tf.addfile(info, f)
    sizes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log(f"wrote {out}: ray {versions['ray']} + {len(CARRIED)} wheels, {sizes / 2**20:.1f} MiB")


# --- install-ray (there) -------------------------------------------------------------------------
def install_ray(carry: Path, target: Path) -> None:
    """Wheels the machine lacks (or has older) and the unpacked Ray into `target` (for PYTHONPATH)."""
    import importlib.metadata as md
    import tarfile

    from packaging.version import Version

    picked = []
    for whl in sorted((carry / "wheels").glob("*.whl")):
        name, version = whl.name.split("-")[:2]
        try:
            have: str | None = md.version(name)
        except md.PackageNotFoundError:
            have = None
        if have is None or Version(have) < Version(version):
            picked.append(whl)
        log(f"{name} {version}: {'install' if whl in picked else 'skip'} (here: {have})")
    target.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    subprocess.run(
        [*pip, "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, picked)], check=True
    )
    t0 = time.perf_counter()
    with tarfile.open(carry / "ray.tar.xz") as tf:
        tf.extractall(target, filter="tar")
    log(f"ray unpacked into {target} in {time.perf_counter() - t0:.1f} s")


# --- Ray on this machine ---------------------------------------------------------------------------
def start_ray(gpus: int, cpus: int | None, temp_dir: str) -> dict[str, Any]:
    import ray
    from ray import serve

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")  # a slow agent start: wait
    t0 = time.perf_counter()
    ray.init(
        address="local",  # never an older cluster left on the machine
        num_cpus=cpus or os.cpu_count(),
        num_gpus=gpus,
        include_dashboard=False,
        object_store_memory=4 << 30,
        _temp_dir=temp_dir,
    )
    serve.start(proxy_location="Disabled", logging_config={"enable_access_log": False})
    env = {
        "python": platform.python_version(),
        "ray": ray.__version__,
        "ray_resources": ray.cluster_resources(),
        "ray_start_s": round(time.perf_counter() - t0, 1),
    }
    log(json.dumps(env))
    return env


class GpuProbe:
    """ray-check's deployment: which GPU a `num_gpus: 1` replica sees, and that it imports the encoder."""

    def __init__(self) -> None:
        import torch

        import infergraph.deployments.encoder  # noqa: F401  (pydantic, fastapi, ... in a replica)

        self.seen = {
            "pid": os.getpid(),
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "INFERGRAPH_DEVICE": os.environ.get("INFERGRAPH_DEVICE"),
            "cuda_devices": torch.cuda.device_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        }

    def __call__(self) -> dict[str, Any]:
        return self.seen


def ray_check(args: argparse.Namespace) -> None:
    """Ray starts, Serve places `args.gpus` replicas of `num_gpus: 1` on distinct GPUs, env vars arrive."""
    import ray
    from ray import serve

    start_ray(args.gpus, args.cpus, args.temp_dir)
    try:
        probe = serve.deployment(
            name="probe",
            num_replicas=args.gpus,
            ray_actor_options={
                "num_cpus": 1,
                "num_gpus": 1,
                "runtime_env": {"env_vars": {"INFERGRAPH_DEVICE": "cuda"}},
            },
        )(GpuProbe)
        handle = serve.run(probe.bind(), name="probe", route_prefix=None)
        seen = {json.dumps(r, sort_keys=True) for r in (handle.remote().result() for _ in range(40))}
        for s in sorted(seen):
            log(f"replica: {s}")
        gpus = {json.loads(s)["CUDA_VISIBLE_DEVICES"] for s in seen}
        verdict = "OK" if len(gpus) == args.gpus else "FAIL"
        log(f"ray-check: {len(seen)} replicas on GPUs {sorted(gpus)}: {verdict}")
    finally:
        serve.shutdown()
        ray.shutdown()


# --- the encoder application ---------------------------------------------------------------------
def serve_settings(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the application's args + runtime_env, MODEL's deployment entry) from configs/serve-gpu.yaml."""
    import yaml

    app = yaml.safe_load(path.read_text())["applications"][0]
    deployment = next(d for d in app["deployments"] if d["name"] == MODEL)
    return app, deployment


def encoder_app(
    model_dir: Path, replicas: int, config: Path, device: str = "cuda", env: dict[str, str] | None = None
) -> tuple[Any, dict[str, Any]]:
    """The deployment `build_app` binds for MODEL (its `encoder_arguments`), with serve-gpu.yaml's
    overrides for it, `num_gpus: 1`, `replicas` replicas, and the weights at `model_dir`."""
    from ray.serve.config import RequestRouterConfig

    from infergraph.deployments.context import BuildContext
    from infergraph.deployments.encoder import TextEncoderDeployment, encoder_arguments
    from infergraph.runtimes.catalog import load_catalog
    from infergraph.runtimes.sources import PathSource

    app, dep = serve_settings(config)
    args = app["args"]
    registry = args.get("registry", {})
    spec = load_catalog(project_path(args["catalog"])).encoder(MODEL)
    spec = spec.model_copy(update={"source": PathSource(type="path", path=str(model_dir.resolve()))})
    ctx = BuildContext(
        args["engine"],
        absolute_tracking_uri(registry.get("tracking_uri", "sqlite:///mlflow/mlflow.db"), launch_root()),
        registry.get("default_variant", "models:/{name}@production"),
        None,
        registry.get("alias_refresh_s", 30.0),
    )
    runtime_env = app.get("runtime_env", {})
    if device == "cpu":  # the plumbing's smoke test on a machine without a GPU
        env = {**(env or {}), "INFERGRAPH_DEVICE": "cpu"}
    if env:  # a lever: env vars over the application's
        runtime_env = {**runtime_env, "env_vars": {**runtime_env.get("env_vars", {}), **env}}
    actor = {
        **dep.get("ray_actor_options", {}),
        "num_gpus": 1 if device == "cuda" else 0,
        "runtime_env": runtime_env,
    }
    options: dict[str, Any] = {
        "num_replicas": replicas,
        "ray_actor_options": actor,
        "max_ongoing_requests": dep["max_ongoing_requests"],
        "user_config": dep["user_config"],
    }
    if "request_router_config" in dep:
        options["request_router_config"] = RequestRouterConfig(**dep["request_router_config"])
    deployment = TextEncoderDeployment.options(name=spec.name, **options)  # as serve.yaml's overrides apply
    settings = {k: v for k, v in options.items() if k != "request_router_config"}
    settings["request_router"] = dep.get("request_router_config", {}).get("request_router_class")
    return deployment.bind(**encoder_arguments(spec, ctx)), settings


# --- load clients (Ray actors, so the load is not one Python process) ----------------------------
class LoadClient:
    """Holds a handle to the encoder deployment; sends `run([Job(EmbedWork(256 texts))])` calls."""

    def __init__(self, calls: list[list[str]], offset: int) -> None:
        from ray import serve

        from infergraph.protocol.common import Job
        from infergraph.protocol.embeddings import EmbedWork

        self.handle = serve.get_deployment_handle(MODEL, app_name=APP)
        self.jobs = [[Job(EmbedWork(texts))] for texts in calls]
        self.offset = offset

    async def _call(self, k: int) -> tuple[int, int, float]:
        """(sentences embedded, errors, the replica's compute seconds for them)."""
        results = await self.handle.run.remote(self.jobs[k % len(self.jobs)])
        bad = sum(r.error is not None or r.embeddings is None for r in results)
        done = sum(len(r.embeddings) for r in results if r.embeddings is not None)
        return done, bad, sum(r.compute_s for r in results)

    async def vectors(self, ks: list[int]) -> list[Any]:
        """The vectors of calls `ks` (the cosine check), all in flight at once."""
        replies = await asyncio.gather(*(self.handle.run.remote(self.jobs[k]) for k in ks))
        return [r[0].embeddings if r[0].error is None else r[0].error for r in replies]

    async def closed_loop(self, in_flight: int, start_at: float, seconds: float, warm: float) -> dict:
        """`in_flight` calls out at all times from `start_at - warm`; what completes in the window."""
        end = start_at + seconds
        done, bad, lat, compute = 0, 0, [], []
        await asyncio.sleep(max(0.0, start_at - warm - time.time()))

        async def lane(k: int) -> None:
            nonlocal done, bad
            while time.time() < end:
                t0 = time.time()
                n, errors, compute_s = await self._call(k)
                t1 = time.time()
                k += in_flight
                bad += errors
                if start_at <= t1 <= end:
                    done += n
                    lat.append(t1 - t0)
                    compute.append(compute_s)

        await asyncio.gather(*(lane(self.offset + i) for i in range(in_flight)))
        return {"sentences": done, "errors": bad, "latencies": lat, "compute": compute}

    async def open_loop(self, rate: float, start_at: float, seconds: float, warm: float, seed: int) -> dict:
        """Poisson arrivals at `rate` calls/s from `start_at - warm`; latency from each scheduled
        arrival to its answer, for arrivals in the window."""
        rng = np.random.default_rng(seed)
        span = warm + seconds
        gaps = rng.exponential(1 / rate, int(rate * span * 1.3) + 20)
        arrivals = np.cumsum(gaps)
        arrivals = arrivals[arrivals < span] + (start_at - warm)
        lat: list[float] = []
        bad, late = 0, 0.0

        async def one(k: int, due: float) -> None:
            nonlocal bad
            _, errors, _ = await self._call(k)
            bad += errors
            if due >= start_at:
                lat.append(time.time() - due)

        tasks = []
        for k, due in enumerate(arrivals):
            if (wait := due - time.time()) > 0:
                await asyncio.sleep(wait)
            late = max(late, time.time() - due)
            tasks.append(asyncio.create_task(one(self.offset + k, float(due))))
        await asyncio.gather(*tasks)
        return {"latencies": lat, "errors": bad, "late_s": late}


# --- the run -------------------------------------------------------------------------------------
def sorted_calls(corpus: list[str], model_dir: Path) -> tuple[list[list[str]], list[list[int]]]:
    """The corpus sorted by token count and cut into calls of CALL sentences, the last call being the
    last CALL of the order (every call holds CALL); (texts of each call, corpus rows of each call)."""
    from infergraph.runtimes.tokenizer import load_tokenizer

    tokenizer, _ = load_tokenizer(model_dir)
    lens = [len(e.ids) for e in tokenizer.encode_batch(corpus, add_special_tokens=True)]
    order = sorted(range(len(corpus)), key=lens.__getitem__)
    starts = list(range(0, max(1, len(order) - CALL + 1), CALL))
    if len(order) > CALL and starts[-1] + CALL < len(order):
        starts.append(len(order) - CALL)
    rows = [order[s : s + CALL] for s in starts]
    return [[corpus[i] for i in r] for r in rows], rows


def smi(*args: str) -> str:
    """nvidia-smi's answer ('' where there is none)."""
    try:
        return subprocess.run(
            ["nvidia-smi", *args], capture_output=True, text=True, timeout=20
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def gpu_sampler(stop: threading.Event, out: list[str]) -> None:
    """nvidia-smi's utilization and memory per GPU every 0.5 s while `stop` is unset."""
    while not stop.wait(0.5):
        q = smi("--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits")
        out.append(q.replace("\n", " | "))


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds or [float("nan")]) * 1e3
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


TOKENIZE_BENCH = """
import json, sys, time
from pathlib import Path
from infergraph.runtimes.tokenizer import load_tokenizer
tok, _ = load_tokenizer(Path(sys.argv[1]))
calls = json.loads(sys.stdin.read())
for texts in calls:
    tok.encode_batch(texts, add_special_tokens=True)
t0 = time.perf_counter()
for _ in range(3):
    for texts in calls:
        tok.encode_batch(texts, add_special_tokens=True)
print((time.perf_counter() - t0) / (3 * len(calls)))
"""


def tokenize_cost(calls: list[list[str]], model_dir: Path) -> list[dict[str, Any]]:
    """Seconds to tokenize one call (what `embed` does on the replica's event loop before batching),
    with the tokenizer's thread pool off (TOKENIZERS_PARALLELISM=false, as configs/serve.yaml has it for
    the CPU) and on (configs/serve-gpu.yaml);
    each in a fresh process, as the variable is read by the tokenizer library."""
    rows = []
    for parallel in ("false", "true"):
        env = {**os.environ, "TOKENIZERS_PARALLELISM": parallel}
        out = subprocess.run(
            [sys.executable, "-c", TOKENIZE_BENCH, str(model_dir)],
            input=json.dumps(calls),
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        row: dict[str, Any] = {"config": "tokenize", "TOKENIZERS_PARALLELISM": parallel}
        try:
            seconds = float(out.stdout.strip().splitlines()[-1])
            row.update(ms_per_call=round(seconds * 1e3, 3), sent_per_s=round(CALL / seconds))
        except (ValueError, IndexError):
            row["error"] = out.stderr[-500:]
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> None:
    import ray
    from ray import serve

    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    emit = row_writer(rows, args.out_dir / "serve.jsonl" if args.out_dir else None)

    corpus = load_corpus(args.limit)
    ref = np.load(args.reference)[: len(corpus)] if args.reference else None
    calls, call_rows = sorted_calls(corpus, args.model_dir)
    for row in tokenize_cost(calls, args.model_dir):
        emit(row)
    import torch  # no CUDA here: the driver holds no GPU

    env = start_ray(max(args.replicas) if args.device == "cuda" else 0, args.cpus, args.temp_dir)
    env.update(torch=torch.__version__, gpus=smi("-L").splitlines())
    emit({"config": "serve-env", **env, "calls": len(calls), "call_sentences": CALL})
    client_cls = ray.remote(num_cpus=1)(LoadClient)
    clients: list[Any] = []
    variants: list[tuple[str, dict[str, str]]] = [] if args.skip_configured else [("configured", {})]
    if args.env:
        override = dict(kv.split("=", 1) for kv in args.env)
        variants.append(("env:" + ",".join(args.env), override))

    def measure(variant: str, override: dict[str, str], n: int, single_rate: float | None) -> float:
        """One deployment of `n` replicas: check, throughput, latency; returns its best sentences/s."""
        nonlocal clients
        tag = {"variant": variant, "replicas": n}
        t0 = time.perf_counter()
        app, settings = encoder_app(args.model_dir, n, project_path(args.config), args.device, override)
        serve.run(app, name=APP, route_prefix=None, logging_config=LOGGING)
        if not clients:  # after the first deploy: the handle needs the application
            clients = [client_cls.remote(calls, 7 * i) for i in range(args.clients)]
        info = serve.get_deployment_handle(MODEL, app_name=APP).info.remote().result()
        apps = smi("--query-compute-apps=pid,gpu_uuid,used_memory", "--format=csv,noheader")
        emit(
            {
                "config": "serve-deploy",
                **tag,
                "deploy_s": round(time.perf_counter() - t0, 1),
                "settings": settings,
                "engine": info["engine"],
                "gpu_precision": info["gpu_precision"],
                "served_variant": info["variant"],
                "batching": info["batching"],
                "gpu_processes": apps.splitlines(),
            }
        )
        # warm every replica on every call shape (graphs per bucket), then the cosine check
        ks = [k for k in range(len(calls)) for _ in range(2 * n)]
        got = ray.get([c.vectors.remote(ks) for c in clients], timeout=240)
        check: dict[str, Any] = {"config": "serve-check", **tag, "calls_checked": len(ks) * len(clients)}
        errors = [v for per in got for v in per if isinstance(v, str)]
        if errors:
            check["errors"] = errors[:3]
        elif ref is not None:
            worst = {"cos_min": 1.0, "cos_mean": 1.0}
            for per in got:
                for k, vec in zip(ks, per, strict=True):
                    c = cosine(np.asarray(vec), ref[call_rows[k]])
                    worst = {key: min(worst[key], c[key]) for key in worst}
            check.update(worst)
        emit(check)

        # throughput: closed loop at each total in-flight count, the best one counts
        points = []
        for per_client in args.in_flight:
            stop, util = threading.Event(), list[str]()
            sampler = threading.Thread(target=gpu_sampler, args=(stop, util), daemon=True)
            start_at = time.time() + 1.0 + args.warm
            sampler.start()
            res = ray.get(
                [c.closed_loop.remote(per_client, start_at, args.seconds, args.warm) for c in clients],
                timeout=args.warm + args.seconds + 120,
            )
            stop.set()
            sampler.join()
            lat = [x for r in res for x in r["latencies"]]
            compute = [x for r in res for x in r["compute"]]
            point = {
                "config": "serve-throughput",
                **tag,
                "in_flight": per_client * len(clients),
                "sent_per_s": round(sum(r["sentences"] for r in res) / args.seconds),
                "errors": sum(r["errors"] for r in res),
                "calls": len(lat),
                **percentiles(lat),
                # the replica's encode_ids wall time per call (EmbedResult.compute_s): GPU side
                "compute_p50_ms": round(float(np.median(compute)) * 1e3, 3) if compute else None,
                "gpu_util_mem": util[len(util) // 2] if util else None,  # index, util %, MiB
            }
            emit(point)
            points.append(point)
        best = max(points, key=lambda p: p["sent_per_s"])
        emit(
            {
                "config": "serve-scaling",
                **tag,
                "call_sentences": CALL,
                "sent_per_s": best["sent_per_s"],
                "in_flight": best["in_flight"],
            }
        )
        base = single_rate or args.base_rate or best["sent_per_s"]

        # latency: the same offered loads for every replica count
        for frac in args.loads:
            load = frac * base
            rate = load / CALL / len(clients)
            start_at = time.time() + 1.0 + args.warm
            res = ray.get(
                [
                    c.open_loop.remote(rate, start_at, args.seconds, args.warm, 100 * n + i)
                    for i, c in enumerate(clients)
                ],
                timeout=args.warm + args.seconds + 180,
            )
            lat = [x for r in res for x in r["latencies"]]
            emit(
                {
                    "config": "serve-latency",
                    **tag,
                    "call_sentences": CALL,
                    "load_fraction_of_1_replica": frac,
                    "offered_sent_per_s": round(load),
                    "calls": len(lat),
                    "errors": sum(r["errors"] for r in res),
                    **percentiles(lat),
                    "max_dispatch_late_ms": round(max(r["late_s"] for r in res) * 1e3, 3),
                }
            )
        return float(best["sent_per_s"])

    try:
        for variant, override in variants:
            single: float | None = None
            for n in args.replicas:  # 1 first: its rate sets the offered loads of the others
                got = measure(variant, override, n, single)
                single = single or got
    except Exception as e:  # keep what was measured, and say why it stopped
        emit({"config": "serve-error", "error": f"{type(e).__name__}: {e}"[:2000]})
        raise
    finally:
        print("\n" + table(rows), flush=True)
        serve.shutdown()
        ray.shutdown()


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'tokenize 256, parallel':<24}{'ms/call':>9}{'sent/s':>9}"]
    lines += [
        f"{r['TOKENIZERS_PARALLELISM']:<24}{r.get('ms_per_call', '-')!s:>9}{r.get('sent_per_s', '-')!s:>9}"
        for r in rows
        if r["config"] == "tokenize"
    ]
    for variant in dict.fromkeys(r["variant"] for r in rows if "variant" in r):
        mine = [r for r in rows if r.get("variant") == variant]
        tp = {r["replicas"]: r["sent_per_s"] for r in mine if r["config"] == "serve-scaling"}
        cos = {r["replicas"]: r.get("cos_min", r.get("errors")) for r in mine if r["config"] == "serve-check"}
        gpu = {
            r["replicas"]: r["compute_p50_ms"]
            for r in mine
            if r["config"] == "serve-throughput" and r["in_flight"] == tp.get(r["replicas"])
        }
        best = {
            r["replicas"]: r
            for r in mine
            if r["config"] == "serve-throughput" and r["sent_per_s"] == tp.get(r["replicas"])
        }
        base = tp.get(min(tp)) if tp else None
        lines.append(f"\n{variant}")
        lines.append(f"{'replicas':<9}{'sent/s @256':>12}{'x 1 replica':>13}{'cos min':>10}{'encode ms':>11}")
        lines += [
            f"{n:<9}{v:>12}{v / base if base else float('nan'):>13.2f}{cos.get(n, '')!s:>10}"
            f"{best[n]['compute_p50_ms'] if n in best else gpu.get(n, '')!s:>11}"
            for n, v in tp.items()
        ]
        lines.append(f"{'replicas':<9}{'offered':>9}{'p50 ms':>9}{'p99 ms':>9}{'late ms':>9}{'errors':>8}")
        lines += [
            f"{r['replicas']:<9}{r['offered_sent_per_s']:>9}{r['p50_ms']:>9}{r['p99_ms']:>9}"
            f"{r['max_dispatch_late_ms']:>9}{r['errors']:>8}"
            for r in mine
            if r["config"] == "serve-latency"
        ]
    lines += [f"error: {r['error']}" for r in rows if r["config"] == "serve-error"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare-ray", help="(here) the carry folder: trimmed Ray + the wheels it needs")
    p.add_argument("--out", type=Path, default=Path(".raycarry"))
    p.add_argument("--ray-wheel", type=Path, help="a downloaded cp312 Ray wheel (else pip downloads it)")
    p.add_argument("--python", default="3.12", help="the GPU machine's Python")
    i = sub.add_parser("install-ray", help="(there) install the carry folder into --target")
    i.add_argument("--carry", type=Path, default=Path(".raycarry"))
    i.add_argument("--target", type=Path, default=Path("/tmp/site"))
    for name, what in (
        ("ray-check", "(there) Ray + Serve + num_gpus:1 placement"),
        ("run", "(there) the bench"),
    ):
        r = sub.add_parser(name, help=what)
        r.add_argument("--cpus", type=int, help="Ray's CPUs (default: all)")
        r.add_argument("--temp-dir", default="/tmp/ray", help="Ray's session folder")
        if name == "ray-check":
            r.add_argument("--gpus", type=int, default=2)
            continue
        r.add_argument("--model-dir", type=Path, required=True)
        r.add_argument("--reference", type=Path, help="CPU FP32 vectors of the corpus (gpu_runtime prepare)")
        r.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="replica counts, 1 first")
        r.add_argument("--clients", type=int, default=8, help="load-client actors")
        r.add_argument("--in-flight", type=int, nargs="+", default=[1, 4], help="calls out per client")
        r.add_argument("--loads", type=float, nargs="+", default=[0.5, 0.8], help="x the 1-replica rate")
        r.add_argument(
            "--base-rate", type=float, help="sentences/s that --loads multiply (default: measured)"
        )
        r.add_argument("--seconds", type=float, default=5.0, help="each measured window")
        r.add_argument("--warm", type=float, default=1.5, help="unmeasured seconds before each window")
        r.add_argument("--config", default=SERVE_CONFIG, help="where the deployment's settings come from")
        r.add_argument(
            "--env",
            nargs="+",
            metavar="KEY=VALUE",
            help="a lever: also measure with these replica env vars over the application's",
        )
        r.add_argument("--skip-configured", action="store_true", help="with --env: only the lever")
        r.add_argument("--out-dir", type=Path)
        r.add_argument("--limit", type=int, help=argparse.SUPPRESS)  # the first N corpus sentences only
        r.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a smoke test here
    a = ap.parse_args()
    if a.cmd == "prepare-ray":
        prepare_ray(a.out, a.ray_wheel, a.python)
    elif a.cmd == "install-ray":
        install_ray(a.carry, a.target)
    elif a.cmd == "ray-check":
        ray_check(a)
    else:
        run(a)


if __name__ == "__main__":
    main()
