#!/usr/bin/env bash
# Peer benchmark side by side, in one run: Infinity (ONNX INT8), naive FastAPI, naive Ray Serve and
# infergraph, same frozen corpus and the peers' own load generator (bench/peers/, vendored).
#   bash infergraph/bench/peers.sh   # ~25 min; runs the peers' one-time setup (bench/peers/setup.sh) first
#   SERVERS=infinity-int8 REPEAT_KEY=1 bash infergraph/bench/peers.sh   # ~9 min: the best peer, then infergraph
#   SERVERS= SERVE_ENV=none LABEL=python-proxy MATRIX="1:32 32:4" bash infergraph/bench/peers.sh   # A/B points
#   MODELS="all-MiniLM-L6-v2 multilingual-e5-small" ... bash infergraph/bench/peers.sh   # the two encoders only
# infergraph starts with `--env-file configs/serve.env` (SERVE_ENV=none: without it).
# Results: $PEERS/results/side_by_side.jsonl and a markdown table on stdout.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PEERS_DIR="${PEERS_DIR:-$ROOT/bench/peers}"
export PEERS="${PEERS:-/tmp/peers}"
export OUT="${OUT:-$PEERS/results/side_by_side.jsonl}"
SERVERS="${SERVERS-infinity-int8 fastapi ray}"   # SERVERS= : infergraph only
SERVE_ENV="${SERVE_ENV:-configs/serve.env}"          # SERVE_ENV=none: Serve's Python proxy, no fast path
LABEL="${LABEL:-infergraph}"
SERVE_CONFIG="${SERVE_CONFIG:-configs/serve.yaml}"   # an A/B: a copy of serve.yaml with one setting changed
MODELS="${MODELS:-}"   # e.g. "all-MiniLM-L6-v2 multilingual-e5-small": serve only these (default: all of serve.yaml)
[ -x "$PEERS/venv/bin/python" ] || bash "$PEERS_DIR/setup.sh"
mkdir -p "$(dirname "$OUT")"
# shellcheck disable=SC2086
"$PEERS_DIR/run_peers.sh" server $SERVERS

cd "$ROOT"
export RAY_TMPDIR="${RAY_TMPDIR:-/tmp/ig-peers-ray}"
# The peers' load generator sends no API key: serve configs/serve.yaml unchanged except that keyless
# requests count as the `dev` tenant (they still pass rate limits, admission queues and metrics).
CONFIG="$PEERS/infergraph-serve.yaml"
# shellcheck disable=SC2086
uv run python -m infergraph.bench.open_config "$SERVE_CONFIG" "$CONFIG" $MODELS
ENV_ARGS=(); [ "$SERVE_ENV" = none ] || ENV_ARGS=(--env-file "$SERVE_ENV")
uv run "${ENV_ARGS[@]}" serve run "$CONFIG" >"$PEERS/logs/infergraph.log" 2>&1 &
SERVE_PID=$!
trap 'kill -TERM $SERVE_PID 2>/dev/null; wait $SERVE_PID 2>/dev/null || true' EXIT  # its exit status is not ours
T0=$SECONDS
until curl -sf -m 5 -H 'Content-Type: application/json' \
    -d '{"model": "all-MiniLM-L6-v2", "input": ["ready check"]}' http://127.0.0.1:8000/v1/embeddings -o /dev/null; do
  kill -0 $SERVE_PID 2>/dev/null || { tail -n 30 "$PEERS/logs/infergraph.log"; exit 1; }
  sleep 1
done
echo "[peers] infergraph ready in $((SECONDS - T0)) s"
sleep 2
"$PEERS_DIR/run_peers.sh" url http://127.0.0.1:8000/v1/embeddings "$LABEL" "$SERVE_PID"
"$PEERS/venv/bin/python" "$PEERS_DIR/summarize.py" "$OUT"
