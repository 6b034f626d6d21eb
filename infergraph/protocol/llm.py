"""`POST /v1/chat/completions` and `POST /v1/completions` (OpenAI's shapes): requests, the job that
crosses the handle, the events a replica streams back, and the payload encoders (JSON or SSE)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_CHOICES = 8


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


class SamplingFields(BaseModel):
    """What both endpoints share; validated as OpenAI validates it (bad values -> 400)."""

    model_config = ConfigDict(extra="ignore")
    model: StrictStr
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    n: StrictInt = Field(1, ge=1, le=MAX_CHOICES)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_limit(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self

    def work(self) -> LLMWork:
        messages = [{"role": m.role, "content": m.text()} for m in self.messages]
        return LLMWork(messages=messages, **self._work_fields())

    def _work_fields(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stops(),
            "seed": self.seed,
            "n": self.n,
        }


class CompletionRequest(SamplingFields):
    prompt: StrictStr | list[StrictStr]
    max_tokens: StrictInt | None = Field(16, ge=1)  # OpenAI's default for /v1/completions

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("one prompt per request (a list of exactly one string)")
        return value

    def work(self) -> LLMWork:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        return LLMWork(prompt=prompt, **ChatCompletionRequest._work_fields(self))  # type: ignore[arg-type]


@dataclass(frozen=True)
class LLMWork:
    """One request's generation: chat messages or a raw prompt, and its sampling settings."""

    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    max_tokens: int | None = None  # None: up to the context window
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1

    @property
    def units(self) -> int:
        """What the router meters LLM work in: sequences."""
        return self.n


@dataclass
class LLMEvent:
    """What an LLM replica streams: new text of one choice, its end, or a refusal before any text."""

    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    error_param: str | None = None
    error_code: str = "invalid_request"  # of a client error (400)
    deadline_exceeded: bool = False  # no token by the deadline: 503 deadline_exceeded
    failed: bool = False  # the engine failed: 503 generation_failed (never a silent end)


@dataclass
class Completion:
    """The state of one response while its events arrive: text and finish per choice, usage."""

    request: ChatCompletionRequest | CompletionRequest
    chat: bool
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))
    texts: dict[int, list[str]] = field(default_factory=dict)
    finish: dict[int, str] = field(default_factory=dict)
    prompt_tokens: dict[int, int] = field(default_factory=dict)
    completion_tokens: dict[int, int] = field(default_factory=dict)
    failure: str | None = None  # why a choice failed after the response had begun

    def add(self, event: LLMEvent) -> None:
        if event.error or event.deadline_exceeded or event.failed:
            self.failure = event.error or "the model stopped generating"
            return
        self.texts.setdefault(event.index, []).append(event.text)
        if event.finish_reason:
            self.finish[event.index] = event.finish_reason
        self.prompt_tokens[event.index] = event.prompt_tokens
        self.completion_tokens[event.index] = event.completion_tokens

    def usage(self) -> dict[str, int]:
        prompt = max(self.prompt_tokens.values(), default=0)  # the prompt is processed once per choice,
        completion = sum(self.completion_tokens.values())  # but billed once, as OpenAI does
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    @property
    def object(self) -> str:
        return "chat.completion" if self.chat else "text_completion"

    def body(self) -> bytes:
        """The whole (non-streamed) response."""
        choices = []
        for i in range(self.request.n):
            text = "".join(self.texts.get(i, []))
            choice: dict[str, Any] = {
                "index": i,
                "finish_reason": self.finish.get(i, "stop"),
                "logprobs": None,
            }
            if self.chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            choices.append(choice)
        return orjson.dumps(self._envelope(self.object, choices, self.usage()))

    def _envelope(
        self, obj: str, choices: list[dict[str, Any]], usage: dict[str, int] | None
    ) -> dict[str, Any]:
        prefix = "chatcmpl-" if self.chat else "cmpl-"
        out: dict[str, Any] = {
            "id": prefix + self.id,
            "object": obj,
            "created": self.created,
            "model": self.request.model,
            "choices": choices,
        }
        if usage is not None:
            out["usage"] = usage
        return out

    # --- server-sent events ---------------------------------------------------------------------
    def sse(self, payload: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def error_chunk(self) -> bytes:
        """The last event of a stream that failed part-way (OpenAI's SDKs raise on an `error` event)."""
        error = {"message": self.failure, "type": "server_error", "param": None, "code": "generation_failed"}
        return self.sse({"error": error})

    def first_chunks(self) -> list[bytes]:
        """Chat streams open each choice with its role, as OpenAI does."""
        if not self.chat:
            return []
        deltas = [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                  for i in range(self.request.n)]  # fmt: skip
        return [self.sse(self._chunk(deltas))]

    def chunk(self, event: LLMEvent) -> bytes | None:
        """The SSE chunk for one event (None when it carries nothing)."""
        if not event.text and not event.finish_reason:
            return None
        if self.chat:
            delta: dict[str, Any] = {"content": event.text} if event.text else {}
            choice: dict[str, Any] = {
                "index": event.index,
                "delta": delta,
                "finish_reason": event.finish_reason,
            }
        else:
            choice = {"index": event.index, "text": event.text, "finish_reason": event.finish_reason,
                      "logprobs": None}  # fmt: skip
        return self.sse(self._chunk([choice]))

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        out = self._envelope(obj, choices, None)
        if self.request.include_usage:
            out["usage"] = None  # every chunk but the last carries usage: null (OpenAI's shape)
        return out

    def last_chunks(self) -> list[bytes]:
        out = []
        if self.request.include_usage:
            final = self._envelope(
                "chat.completion.chunk" if self.chat else "text_completion", [], self.usage()
            )
            out.append(self.sse(final))
        out.append(b"data: [DONE]\n\n")
        return out
