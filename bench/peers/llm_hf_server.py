"""Plain Hugging Face `generate` behind an OpenAI-compatible `POST /v1/chat/completions`: the baseline
that does no batching at all. One request at a time (an asyncio lock around each generation), the
answer streamed as SSE (`stream: true`, `stream_options.include_usage`) or returned whole.

    uv run python bench/peers/llm_hf_server.py --model-dir <transformers folder> --port 8011 --threads 2

`infergraph.bench.llm_peers` starts it on the converted SmolLM2 folder (fp32, the one infergraph's
engine loads). `model.generate` runs on a worker thread with a `TextIteratorStreamer` whose `put`
releases the text of every token at once (the stock one holds text back until a word ends, which
would add a token or two to the time to first token).
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid
from typing import Any

import orjson
import torch
from aiohttp import web
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)


class TokenStreamer(TextIteratorStreamer):
    """A `TextIteratorStreamer` that hands over each token's text as soon as it decodes (only an
    incomplete UTF-8 character waits for the next token)."""

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1:
            value = value[0]
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.token_cache.extend(value.tolist())
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        if text.endswith("\ufffd"):
            return
        new, self.print_len = text[self.print_len :], len(text)
        if new:
            self.on_finalized_text(new)


class Cancelled(StoppingCriteria):
    """Stops `generate` once the client has gone away."""

    def __init__(self) -> None:
        self.flag = threading.Event()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.flag.is_set(), dtype=torch.bool)


class Server:
    def __init__(self, model_dir: str, name: str) -> None:
        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.lock = asyncio.Lock()  # one generation at a time

    def _start(
        self, body: dict[str, Any]
    ) -> tuple[TokenStreamer, dict[str, Any], threading.Thread, Cancelled]:
        ids = self.tokenizer.apply_chat_template(
            body["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        streamer = TokenStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        temperature = float(body.get("temperature", 1.0))
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": temperature, "top_p": float(body.get("top_p", 1.0))}
            if temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        result: dict[str, Any] = {"prompt_tokens": int(ids["input_ids"].shape[1])}
        max_new = int(body.get("max_tokens") or 256)
        cancelled = Cancelled()

        def work() -> None:
            try:
                with torch.inference_mode():
                    out = self.model.generate(
                        **ids,
                        max_new_tokens=max_new,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([cancelled]),
                        pad_token_id=self.tokenizer.eos_token_id,
                        **sampling,
                    )
                result["completion_tokens"] = int(out.shape[1]) - result["prompt_tokens"]
            except Exception as exc:  # the consumer sees the end of the stream, then the error
                result["error"] = repr(exc)
                streamer.end()
            result["finish_reason"] = "length" if result.get("completion_tokens", 0) >= max_new else "stop"

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        return streamer, result, thread, cancelled

    async def _texts(self, streamer: TokenStreamer) -> Any:
        loop = asyncio.get_running_loop()
        while True:
            text = await loop.run_in_executor(None, streamer.text_queue.get)
            if text is streamer.stop_signal:
                return
            if text:
                yield text

    def _usage(self, result: dict[str, Any]) -> dict[str, int]:
        p, c = result["prompt_tokens"], result.get("completion_tokens", 0)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> bytes:
            choices = [{"index": 0, "delta": delta, "finish_reason": finish}] if delta or finish else []
            payload = {"id": rid, "object": "chat.completion.chunk", "created": created,
                       "model": self.name, "choices": choices}  # fmt: skip
            if usage is not None:
                payload["usage"] = usage
            return b"data: " + orjson.dumps(payload) + b"\n\n"

        async with self.lock:
            streamer, result, thread, cancelled = self._start(body)
            try:
                return await self._answer(request, body, streamer, result, thread, chunk, rid, created)
            finally:  # answered, or the client went away (the handler is cancelled): stop generating
                cancelled.flag.set()
                await asyncio.shield(asyncio.get_running_loop().run_in_executor(None, thread.join))

    async def _answer(
        self,
        request: web.Request,
        body: dict[str, Any],
        streamer: TokenStreamer,
        result: dict[str, Any],
        thread: threading.Thread,
        chunk: Any,
        rid: str,
        created: int,
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        if not body.get("stream"):
            text = "".join([t async for t in self._texts(streamer)])
            await loop.run_in_executor(None, thread.join)
            if "error" in result:
                return web.json_response({"error": {"message": result["error"]}}, status=500)
            message = {"role": "assistant", "content": text}
            return web.json_response({
                "id": rid, "object": "chat.completion", "created": created, "model": self.name,
                "choices": [{"index": 0, "message": message, "finish_reason": result["finish_reason"]}],
                "usage": self._usage(result),
            })  # fmt: skip
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(chunk({"role": "assistant", "content": ""}))
        async for text in self._texts(streamer):
            await response.write(chunk({"content": text}))
        await loop.run_in_executor(None, thread.join)
        await response.write(chunk({}, result["finish_reason"]))
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(chunk({}, usage=self._usage(result)))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.name, "object": "model"}]})


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--name", default="smollm2-135m-instruct")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    server = Server(a.model_dir, a.name)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.chat)
    app.router.add_get("/v1/models", server.models)
    # a client that goes away cancels its handler: generation stops, the next request gets the lock
    web.run_app(app, host=a.host, port=a.port, access_log=None, print=None, handler_cancellation=True)


if __name__ == "__main__":
    main()
