"""The catalog entry of an `llm` model: where its weights come from and how its engine batches."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from infergraph.runtimes.sources import ModelName, Source

BatchingMode = Literal["none", "static", "dynamic", "continuous"]


class LLMSpec(BaseModel):
    """A Llama-family causal LM served token by token (`POST /v1/chat/completions`)."""

    model_config = ConfigDict(extra="forbid")
    name: ModelName
    kind: Literal["llm"]
    source: Source
    max_context: int = Field(2048, ge=16, description="prompt + completion tokens of one request")
    description: str = ""
    # engine settings (infergraph.runtimes.llm.engine)
    kv_budget_mb: float = Field(256, gt=0, description="memory of the KV block pool, all layers")
    block_size: int = Field(16, ge=1, description="tokens per KV block")
    max_batch_tokens: int = Field(256, ge=1, description="tokens per model step: decodes + prefill chunks")
    max_running: int = Field(32, ge=1, description="sequences in the batch at once")
    mode: BatchingMode = "continuous"
    prefix_caching: bool = Field(
        True, description="prefill a shared prompt prefix (system prompt, earlier turns) once, reuse its KV"
    )
    precision: Literal["fp32", "bf16", "int8", "int4"] = Field(
        "fp32",
        description="fp32: exact (the reference); bf16: weights, activations and KV in bf16; int8/int4: "
        "weight-only quantisation, fp32 activations (int4 = the GGUF's own 4-bit weights)",
    )
    int4_rows: int = Field(
        0,
        ge=0,
        description="precision bf16, CPU: model steps of at most this many tokens (decode with few "
        "streams) use a second copy of the weights in int4, the GGUF's own 4-bit blocks, with bf16 "
        "activations: a quarter of the bytes to read per step; 0: off (docs/llm.md)",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads of a model step (default: INFERGRAPH_ENGINE_THREADS, else every core); "
        "where the router and the clients share the cores, fewer can be faster (docs/llm.md)",
    )
    batch_wait_ms: float = Field(50.0, ge=0, description="mode=dynamic: how long a batch may wait to fill")
    engine: Literal["infergraph", "vllm"] = Field(
        "infergraph", description="infergraph: this package's CPU engine; vllm: vLLM on GPUs (unrun here)"
    )
    vllm_args: dict[str, Any] = Field(
        default_factory=dict, description="engine: vllm: extra AsyncEngineArgs (gpu_memory_utilization...)"
    )
