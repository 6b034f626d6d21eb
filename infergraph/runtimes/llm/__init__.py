"""A small LLM runtime: offline weights, a paged-KV Llama forward, and a continuous-batching engine."""
