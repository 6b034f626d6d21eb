"""Locust load test of every kind the service serves: one user class per QoS tier, a kind mix, shapes, a log.

    uv run locust -f loadtest/ --headless -H http://127.0.0.1:8000 \\
        --ig-kinds embeddings:6,rerank:2,chat:1,transcriptions:1 --ig-shape steady --ig-base-users 16 \\
        --ig-log results/loadtest/manual/requests.jsonl --csv results/loadtest/manual/locust \\
        --html results/loadtest/manual/locust.html --json-file results/loadtest/manual/locust
    uv run python -m loadtest.report results/loadtest/manual --mlflow

`-f loadtest/locustfile.py` is the same test (`-f loadtest/` imports every `*.py` in the folder that
does not start with `_`; `report.py` and `audio_clips.py` are imported too and define nothing Locust
picks up).

Users: PremiumUser, StandardUser, BatchUser, each sending with its tier's API key (a comma-separated
list of keys spreads the tier's users over several tenants). Each request picks its kind from the
tier's mix (`--ig-kinds`, or `--ig-<tier>-kinds`; see KINDS):

- embeddings (`POST /v1/embeddings`): premium and standard send mostly one sentence, sometimes a
  short list; batch sends lists of 16-32 sentences;
- rerank (`POST /v1/rerank`): a corpus sentence as the query, 8-24 corpus sentences as documents;
- chat (`POST /v1/chat/completions`, `stream: true`): a prompt of loadtest/llm_prompts.jsonl, read
  as server-sent events; logs time to first token, output tokens and tokens/s;
- transcriptions (`POST /v1/audio/transcriptions`, multipart): a clip of loadtest/audio/ (2-9 s of
  speech); logs its audio seconds.

Every request is named "<kind> <tier>", so Locust's stats and `--csv` files are per kind and tier;
a non-200 answer is a failure named "<status> <error code>". Tier mix: `--ig-<tier>-weight` or a
fixed `--ig-<tier>-users`; pace: `--ig-<tier>-rps` requests/s per user (0: back to back). To leave a
tier out, name the classes to run: `locust -f loadtest/ PremiumUser StandardUser`.

Shape (`--ig-shape`, see SHAPES): `none` (default) is plain Locust (-u/-r/-t); `steady`, `step`,
`spike`, `soak` and `overload` set the user count over time from `--ig-base-users` and their own
options, and stop when their last stage ends (-u is ignored, and so is -t: headless Locust arms it
only after the shape has ended).

Log: with `--ig-log PATH`, every completed request is one JSON line (see `_record`) and `PATH` with
suffix `.meta.json` holds the options, the phases, how many requests each tier and kind sent, and
`GET /admin/usage` before and after the run (`--ig-admin-key`; the report's cost per 1,000
requests), so the report can tell requests lost in flight (sent but never completed) from answers.

Keys: `--ig-<tier>-key` or the env vars INFERGRAPH_PREMIUM_KEY, INFERGRAPH_STANDARD_KEY,
INFERGRAPH_BATCH_KEY, INFERGRAPH_ADMIN_KEY (defaults: the demo tenants of configs/tenants.yaml).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import random
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import gevent
import locust
from gevent.pool import Group
from locust import FastHttpUser, LoadTestShape, constant, events, task
from locust.env import Environment

from infergraph.corpus import CORPUS, load_corpus  # stdlib only: nothing heavy in this gevent-patched process
from infergraph.paths import PROJECT_ROOT
from loadtest.audio_clips import AUDIO_DIR, Clip, load_clips  # stdlib only

TIERS = ("premium", "standard", "batch")
DEFAULT_KEYS = {
    "premium": "sk-ig-demo-premium",
    "standard": "sk-ig-demo-standard",
    "batch": "sk-ig-demo-batch",
}
ADMIN_KEY = "sk-ig-admin"
# The tiers' default deadlines (configs/tenants.yaml); X-Deadline-Ms can only tighten them. For chat
# the deadline applies to the first token, for the other kinds to the whole answer.
DEFAULT_DEADLINE_MS = {"premium": 1000, "standard": 5000, "batch": 30000}
DEFAULT_WEIGHT = {"premium": 1, "standard": 1, "batch": 6}
# Requests/s per user. 24 users of this mix (3 premium, 3 standard, 18 batch) offer ~9.6 requests/s,
# ~100 sentences/s: about what the English encoder sustains on the 2-core reference box.
# Interactive tiers send one sentence (or a short list), bulk batch-tier work 16-32, so the model
# and not Serve's per-request cost is the limit. Many slow-paced batch users keep the offered load
# up when the service slows down (each user waits for its answer, as a closed loop does).
DEFAULT_RPS = {"premium": 1.0, "standard": 1.0, "batch": 0.2}

# The kinds, their routes and default models (configs/serve.yaml).
KINDS = ("embeddings", "rerank", "chat", "transcriptions")
ENDPOINTS = {
    "embeddings": "/v1/embeddings",
    "rerank": "/v1/rerank",
    "chat": "/v1/chat/completions",
    "transcriptions": "/v1/audio/transcriptions",
}
ENDPOINT = ENDPOINTS["embeddings"]
DEFAULT_MODELS = {
    "embeddings": "all-MiniLM-L6-v2",
    "rerank": "rerank-hybrid-en",
    "chat": "smollm2-135m-instruct",
    "transcriptions": "whisper-tiny.en",
}
# A tier without its own --ig-<tier>-kinds takes --ig-kinds, limited to these kinds when given here
# (unless that leaves none): the demo batch tenant may use MiniLM and whisper-tiny.en only.
TIER_KINDS = {"batch": ("embeddings", "transcriptions")}
PROMPTS = PROJECT_ROOT / "loadtest" / "llm_prompts.jsonl"

log = logging.getLogger("infergraph.loadtest")


def parse_mix(text: str) -> dict[str, float]:
    """`embeddings:6,rerank:2,chat` -> {kind: weight} (a bare kind weighs 1; weights > 0)."""
    mix: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, weight = item.partition(":")
        kind = kind.strip()
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r} in {text!r} (kinds: {', '.join(KINDS)})")
        mix[kind] = float(weight) if weight.strip() else 1.0
        if not mix[kind] > 0:
            raise ValueError(f"the weight of {kind} must be > 0 in {text!r}")
    if not mix:
        raise ValueError(f"no kinds in {text!r}")
    return mix


def tier_mix(opts: Any, tier: str) -> dict[str, float]:
    """The kind mix of one tier's users (see TIER_KINDS)."""
    own = getattr(opts, f"ig_{tier}_kinds", "")
    if own:
        return parse_mix(own)
    mix = parse_mix(opts.ig_kinds)
    allowed = {k: w for k, w in mix.items() if k in TIER_KINDS.get(tier, KINDS)}
    return allowed or mix


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    g = parser.add_argument_group("infergraph", "Options of loadtest/locustfile.py")
    g.add_argument(
        "--ig-kinds",
        default="embeddings",
        help="kind mix of every tier, e.g. embeddings:6,rerank:2,chat:1,transcriptions:1",
    )
    g.add_argument(
        "--ig-model",
        default=DEFAULT_MODELS["embeddings"],
        env_var="INFERGRAPH_MODEL",
        help="embeddings model",
    )
    g.add_argument("--ig-rerank-model", default=DEFAULT_MODELS["rerank"], help="rerank model")
    g.add_argument("--ig-chat-model", default=DEFAULT_MODELS["chat"], help="chat model")
    g.add_argument("--ig-transcription-model", default=DEFAULT_MODELS["transcriptions"], help="speech model")
    g.add_argument("--ig-corpus", default=str(CORPUS), help="JSONL with a 'text' field per line")
    g.add_argument("--ig-prompts", default=str(PROMPTS), help="chat prompts (JSONL: messages, max_tokens)")
    g.add_argument("--ig-audio-dir", default=str(AUDIO_DIR), help="speech clips (manifest.json + files)")
    for tier in TIERS:
        g.add_argument(
            f"--ig-{tier}-key",
            default=DEFAULT_KEYS[tier],
            env_var=f"INFERGRAPH_{tier.upper()}_KEY",
            help=f"API key(s) of the {tier} users (comma-separated: users take them in turn)",
        )
        g.add_argument(
            f"--ig-{tier}-kinds",
            default="",
            help=f"kind mix of the {tier} users (default: --ig-kinds"
            + (f", limited to {'/'.join(TIER_KINDS[tier])})" if tier in TIER_KINDS else ")"),
        )
        g.add_argument(
            f"--ig-{tier}-weight", type=int, default=DEFAULT_WEIGHT[tier], help="user weight (>= 1)"
        )
        g.add_argument(f"--ig-{tier}-users", type=int, default=0, help="fixed user count (0: by weight)")
        g.add_argument(
            f"--ig-{tier}-rps", type=float, default=DEFAULT_RPS[tier], help="requests/s per user (0: no wait)"
        )
        g.add_argument(
            f"--ig-{tier}-deadline-ms",
            type=int,
            default=0,
            help=f"send X-Deadline-Ms (0: do not; the tier's default is {DEFAULT_DEADLINE_MS[tier]} ms)",
        )
    g.add_argument("--ig-list-share", type=float, default=0.2, help="share of premium/standard lists")
    g.add_argument("--ig-list-max", type=int, default=8, help="premium/standard lists hold 2..this")
    g.add_argument("--ig-batch-min", type=int, default=16, help="smallest batch-tier list")
    g.add_argument("--ig-batch-max", type=int, default=32, help="largest batch-tier list")
    g.add_argument("--ig-rerank-min", type=int, default=8, help="fewest documents of a rerank request")
    g.add_argument("--ig-rerank-max", type=int, default=24, help="most documents of a rerank request")
    g.add_argument("--ig-chat-max-tokens", type=int, default=0, help="chat max_tokens (0: the prompt's own)")
    g.add_argument("--ig-timeout-s", type=float, default=60.0, help="client connect and read timeout")
    g.add_argument("--ig-seed", type=int, default=0, help="seed of the inputs each user picks")
    g.add_argument("--ig-log", default="", help="write one JSON line per request here (+ .meta.json)")
    g.add_argument(
        "--ig-admin-key",
        default=ADMIN_KEY,
        env_var="INFERGRAPH_ADMIN_KEY",
        help="read GET /admin/usage before and after (cost per 1,000 requests); empty: do not",
    )
    g.add_argument("--ig-shape", choices=["none", *SHAPES], default="none", help="load shape (see SHAPES)")
    g.add_argument("--ig-base-users", type=int, default=32, help="shapes: users at the base")
    g.add_argument("--ig-spawn-rate", type=float, default=50.0, help="shapes: users started/s between stages")
    g.add_argument("--ig-steady-s", type=float, default=60.0, help="steady shape: length")
    g.add_argument("--ig-steps", type=int, default=4, help="step shape: number of steps")
    g.add_argument("--ig-step-users", type=int, default=8, help="step shape: users added per step")
    g.add_argument("--ig-step-s", type=float, default=30.0, help="step shape: length of each step")
    g.add_argument(
        "--ig-spike-factor", type=float, default=5.0, help="spike shape: users x this in the spike"
    )
    g.add_argument("--ig-spike-s", type=float, default=10.0, help="spike shape: length of the spike")
    g.add_argument("--ig-soak-s", type=float, default=1800.0, help="soak shape: length (at most 24 h)")
    g.add_argument("--ig-soak-window-s", type=float, default=300.0, help="soak shape: report window")
    g.add_argument("--ig-overload-factor", type=float, default=3.0, help="overload shape: users x this")
    g.add_argument("--ig-warmup-s", type=float, default=30.0, help="overload/spike: base before the step")
    g.add_argument("--ig-overload-s", type=float, default=60.0, help="overload shape: length of the step")
    g.add_argument("--ig-recover-s", type=float, default=30.0, help="overload/spike: base after the step")


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Stage:
    phase: str  # the name requests sent during the stage are logged under
    duration_s: float
    users: int
    spawn_rate: float


def steady(o: Any) -> list[Stage]:
    """`--ig-base-users` users for `--ig-steady-s`: the latency and attainment of one offered load."""
    return [Stage("steady", o.ig_steady_s, o.ig_base_users, o.ig_spawn_rate)]


def step(o: Any) -> list[Stage]:
    """`--ig-steps` stages of `--ig-step-s`, from `--ig-base-users` up by `--ig-step-users` each:
    where the service stops keeping up (a capacity staircase)."""
    return [
        Stage(f"step{i + 1}", o.ig_step_s, o.ig_base_users + i * o.ig_step_users, o.ig_spawn_rate)
        for i in range(max(1, o.ig_steps))
    ]


def spike(o: Any) -> list[Stage]:
    """Base for `--ig-warmup-s`, `--ig-spike-factor` x base started at once for `--ig-spike-s`,
    base for `--ig-recover-s`: a burst too short for autoscaling, absorbed by queues and refusals."""
    high = max(1, round(o.ig_base_users * o.ig_spike_factor))
    burst = max(o.ig_spawn_rate, float(high))  # every spike user within a second
    return [
        Stage("warmup", o.ig_warmup_s, o.ig_base_users, o.ig_spawn_rate),
        Stage("spike", o.ig_spike_s, high, burst),
        Stage("recover", o.ig_recover_s, o.ig_base_users, burst),
    ]


def soak(o: Any) -> list[Stage]:
    """`--ig-base-users` for `--ig-soak-s` (at most 24 h), logged in `--ig-soak-window-s` windows
    (phases soak1, soak2, ...) so drift (leaks, growing queues, slower answers) shows per window."""
    total = min(float(o.ig_soak_s), 86_400.0)
    window = max(1.0, min(float(o.ig_soak_window_s), total))
    n = max(1, round(total / window))
    return [Stage(f"soak{i + 1}", total / n, o.ig_base_users, o.ig_spawn_rate) for i in range(n)]


def overload(o: Any) -> list[Stage]:
    """Base users for `--ig-warmup-s`, `--ig-overload-factor` x base for `--ig-overload-s`, base for
    `--ig-recover-s` (bench/overload.py): refusals instead of collapse, and recovery after it."""
    high = max(1, round(o.ig_base_users * o.ig_overload_factor))
    return [
        Stage("warmup", o.ig_warmup_s, o.ig_base_users, o.ig_spawn_rate),
        Stage("overload", o.ig_overload_s, high, o.ig_spawn_rate),
        Stage("recover", o.ig_recover_s, o.ig_base_users, o.ig_spawn_rate),
    ]


SHAPES: dict[str, Callable[[Any], list[Stage]]] = {
    "steady": steady,
    "step": step,
    "spike": spike,
    "soak": soak,
    "overload": overload,
}


# --------------------------------------------------------------------------- state and users


@dataclass(frozen=True)
class Prompt:
    messages: list[dict[str, str]]
    max_tokens: int


def load_prompts(path: str | Path) -> list[Prompt]:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise ValueError(f"no prompts in {path}")
    return [Prompt(r["messages"], int(r.get("max_tokens") or 64)) for r in rows]


class _State:
    """Process-wide state of the run (Locust runs one test per process)."""

    corpus: list[str] = []
    prompts: list[Prompt] = []
    clips: list[Clip] = []
    mixes: dict[str, tuple[list[str], list[float]]] = {}  # tier -> (kinds, weights)
    log_file: IO[str] | None = None
    meta_path: Path | None = None
    sent: Counter[str] = Counter()  # per tier
    sent_by_name: Counter[str] = Counter()  # per request name, "<kind> <tier>"
    pending = Group()  # requests in flight (see TierUser.request)
    abandoned: Counter[str] = Counter()  # still in flight when Locust exited
    user_ids = itertools.count()
    tier_users: Counter[str] = Counter()
    started_epoch: float | None = None
    environment: Environment | None = None
    usage_before: dict[str, Any] | None = None
    usage_after: dict[str, Any] | None = None


def poisson_pacing(rps: float) -> Any:
    """Like Locust's constant_throughput, but with exponential gaps: each user is a Poisson source of
    `rps` requests/s (while its requests keep up), so users do not fire in lock-step bursts."""

    def wait(user: Any) -> float:
        now = time.monotonic()
        next_start = max(getattr(user, "_next_start", now), now - 1 / rps) + user.rng.expovariate(rps)
        user._next_start = next_start
        return max(0.0, next_start - now)

    return wait


@dataclass
class Call:
    """One request a builder made: where it goes, its body, and what the log records about it."""

    kind: str
    model: str
    json: dict[str, Any] | None = None
    data: bytes | None = None  # a raw body (multipart)
    content_type: str | None = None
    stream: bool = False
    sentences: int = 0  # embeddings: inputs; rerank: documents
    audio_s: float | None = None  # transcriptions: the clip's length
    extra: dict[str, Any] = field(default_factory=dict)


def multipart(fields: dict[str, str], filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    """A multipart/form-data body with text fields and one `file` part; (body, Content-Type)."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    body = b"".join([*parts, head, data, f"\r\n--{boundary}--\r\n".encode()])
    return body, f"multipart/form-data; boundary={boundary}"


class TierUser(FastHttpUser):
    abstract = True
    host = "http://127.0.0.1:8000"
    tier = ""
    wait_time = constant(0)  # replaced by --ig-<tier>-rps at init

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.rng = random.Random(f"{opts.ig_seed}-{self.tier}-{next(_State.user_ids)}")
        self.models = {
            "embeddings": opts.ig_model,
            "rerank": opts.ig_rerank_model,
            "chat": opts.ig_chat_model,
            "transcriptions": opts.ig_transcription_model,
        }
        keys = [k.strip() for k in getattr(opts, f"ig_{self.tier}_key").split(",") if k.strip()]
        self.tenant = _State.tier_users[self.tier] % max(1, len(keys))  # users take the keys in turn
        _State.tier_users[self.tier] += 1
        self.headers = {"Authorization": f"Bearer {keys[self.tenant] if keys else ''}"}
        self.deadline_ms: int = getattr(opts, f"ig_{self.tier}_deadline_ms") or DEFAULT_DEADLINE_MS[self.tier]
        if getattr(opts, f"ig_{self.tier}_deadline_ms"):
            self.headers["X-Deadline-Ms"] = str(self.deadline_ms)

    # --- request builders, one per kind ----------------------------------------------------------
    def sentences(self) -> int:
        opts = self.environment.parsed_options
        if self.rng.random() < opts.ig_list_share:
            return self.rng.randint(2, max(2, opts.ig_list_max))
        return 1

    def embeddings(self) -> Call:
        n = self.sentences()
        texts = self.rng.sample(_State.corpus, n) if n > 1 else [self.rng.choice(_State.corpus)]
        body = {"model": self.models["embeddings"], "input": texts if n > 1 else texts[0]}
        return Call("embeddings", body["model"], json=body, sentences=n)

    def rerank(self) -> Call:
        opts = self.environment.parsed_options
        n = self.rng.randint(max(1, opts.ig_rerank_min), max(1, opts.ig_rerank_min, opts.ig_rerank_max))
        query, *documents = self.rng.sample(_State.corpus, n + 1)
        body = {"model": self.models["rerank"], "query": query, "documents": documents, "top_n": 3}
        return Call("rerank", body["model"], json=body, sentences=n)

    def chat(self) -> Call:
        opts = self.environment.parsed_options
        prompt = self.rng.choice(_State.prompts)
        body = {
            "model": self.models["chat"],
            "messages": prompt.messages,
            "max_tokens": opts.ig_chat_max_tokens or prompt.max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        return Call("chat", body["model"], json=body, stream=True, extra={"max_tokens": body["max_tokens"]})

    def transcriptions(self) -> Call:
        clip = self.rng.choice(_State.clips)
        model = self.models["transcriptions"]
        body, content_type = multipart({"model": model}, clip.name, clip.data, "audio/flac")
        return Call("transcriptions", model, data=body, content_type=content_type, audio_s=clip.duration_s)

    # --- the task --------------------------------------------------------------------------------
    @task
    def request(self) -> None:
        kinds, weights = _State.mixes[self.tier]
        kind = kinds[0] if len(kinds) == 1 else self.rng.choices(kinds, weights)[0]
        call: Call = getattr(self, kind)()
        # The request runs in a greenlet of its own: Locust kills users when it ramps down or stops,
        # and even with --stop-timeout a user whose wait just ended can be killed mid-request (a race
        # in User.stop). A killed user's request still completes, is logged, and counts in the stats.
        _State.sent[self.tier] += 1
        _State.sent_by_name[f"{kind} {self.tier}"] += 1
        _State.pending.spawn(TierUser.send, self, call).get()

    def send(self, call: Call) -> None:
        context = {
            "tier": self.tier,
            "kind": call.kind,
            "model": call.model,
            "tenant": self.tenant,
            "sentences": call.sentences,
            "audio_s": call.audio_s,
            "deadline_ms": self.deadline_ms,
            **call.extra,
        }
        headers = dict(self.headers)
        if call.content_type:
            headers["Content-Type"] = call.content_type
        if call.stream:
            headers["Accept-Encoding"] = "identity"  # events as they come, not a compressed body
        started = time.perf_counter()
        with self.client.post(
            ENDPOINTS[call.kind],
            json=call.json,
            data=call.data,  # type: ignore[arg-type]  # bytes are sent as they are
            headers=headers,
            name=f"{call.kind} {self.tier}",
            context=context,
            catch_response=True,
            stream=call.stream,
        ) as resp:
            problem = None
            if call.stream and resp.status_code == 200:
                problem = read_events(resp, started)
            if resp.status_code == 200 and problem is None:
                resp.success()
            elif resp.status_code:  # an HTTP error: name it by status and code in Locust's failure stats
                code = problem or error_code(resp) or "no_code"
                resp.request_meta["context"]["code"] = code
                resp.failure(f"{resp.status_code} {code}")
            # status 0 (connection error, timeout): Locust records the exception itself


def read_events(resp: Any, started: float) -> str | None:
    """Read a chat completion's server-sent events as they arrive; puts time to first token, output
    tokens and tokens/s into the request's context and its whole duration into its response time.
    Returns None, or an error code when the stream broke off or carried an error."""
    ctx = resp.request_meta["context"]
    raw = resp._response  # geventhttpclient's response: readline() returns each line as it arrives
    first = last = None
    chunks = 0
    usage: dict[str, Any] | None = None
    done = False
    problem = None
    try:
        while line := raw.readline(b"\n"):
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                while raw.readline(b"\n"):  # the blank line after it: the connection goes back to the pool
                    pass
                break
            event = json.loads(data)
            if "error" in event:
                problem = str(event["error"].get("code") or "stream_error")
                break
            usage = event.get("usage") or usage
            if any((c.get("delta") or {}).get("content") for c in event.get("choices") or ()):
                last = time.perf_counter()
                first = first or last
                chunks += 1
    except Exception as exc:  # the connection went away mid-stream
        problem = f"stream_broken ({type(exc).__name__})"
    end = time.perf_counter()
    resp.request_meta["response_time"] = (end - started) * 1000  # Locust stopped at the headers
    tokens = int((usage or {}).get("completion_tokens") or chunks)
    ctx["output_tokens"] = tokens
    ctx["ttft_ms"] = round((first - started) * 1000, 3) if first is not None else None
    if first is not None and last is not None and last > first and tokens > 1:
        ctx["tokens_per_s"] = round((tokens - 1) / (last - first), 2)  # decode rate after the first
    if problem is None and not done:
        problem = "stream_incomplete"
    return problem


class PremiumUser(TierUser):
    tier = "premium"


class StandardUser(TierUser):
    tier = "standard"


class BatchUser(TierUser):
    tier = "batch"

    def sentences(self) -> int:
        opts = self.environment.parsed_options
        return self.rng.randint(opts.ig_batch_min, max(opts.ig_batch_min, opts.ig_batch_max))


USER_CLASSES: dict[str, type[TierUser]] = {
    "premium": PremiumUser,
    "standard": StandardUser,
    "batch": BatchUser,
}


def error_code(resp: Any) -> str | None:
    """The OpenAI error body's `error.code` (or `error.type`), None when the body is not one."""
    with contextlib.suppress(Exception):
        err = json.loads(resp.content)["error"]
        return str(err.get("code") or err.get("type") or "") or None
    return None


def _header(resp: Any, name: str) -> str | None:
    headers = getattr(resp, "headers", None)
    if not headers:
        return None
    value = headers.get(name)
    return None if value is None else str(value)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


class IgShape(LoadTestShape):
    """`--ig-shape <name>`: the stages of SHAPES[name], one after the other, then stop.

    With `--ig-shape none` the init hook removes the shape, and Locust's -u/-r/-t work as usual
    (use_common_options keeps Locust from warning that they are ignored).
    """

    use_common_options = True

    def reset_time(self) -> None:
        super().reset_time()
        _State.started_epoch = time.time()

    def stages(self) -> list[Stage]:
        assert self.runner is not None and self.runner.environment.parsed_options is not None
        o = self.runner.environment.parsed_options
        return SHAPES[o.ig_shape](o)

    def phase_at(self, elapsed_s: float) -> str:
        """The phase a request sent at elapsed_s belongs to; sends in the last second before Locust
        stops (it checks the shape once a second) count to the last phase."""
        end = 0.0
        stages = self.stages()
        for s in stages:
            end += s.duration_s
            if elapsed_s < end:
                return s.phase
        return stages[-1].phase

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        end = 0.0
        for s in self.stages():
            end += s.duration_s
            if elapsed < end:
                return s.users, s.spawn_rate
        return None


def _phase(environment: Environment, sent_epoch: float) -> str:
    shape = environment.shape_class
    if not isinstance(shape, IgShape) or _State.started_epoch is None:
        return "constant"
    return shape.phase_at(sent_epoch - _State.started_epoch)


def _record(environment: Environment, context: dict[str, Any], response: Any, **meta: Any) -> dict[str, Any]:
    status = int(getattr(response, "status_code", 0) or 0)
    exception = meta.get("exception")
    sent = float(meta.get("start_time") or time.time())
    code = context.get("code") or (error_code(response) if status not in (0, 200) else None)
    record = {
        "t": round(sent, 4),  # epoch s when sent
        "tier": context["tier"],
        "kind": context.get("kind", "embeddings"),
        "model": context.get("model"),
        "tenant": context.get("tenant", 0),  # index into the tier's keys
        "phase": _phase(environment, sent),
        "status": status,  # 0: no HTTP answer (connection error, timeout)
        "code": code,  # the error body's code; on a 200 stream: stream_incomplete, stream_broken ...
        "latency_ms": round(float(meta.get("response_time") or 0.0), 3),
        "queue_ms": _number(_header(response, "x-infergraph-queue-ms")),
        "model_ms": _number(_header(response, "x-infergraph-model-ms")),
        "served_tier": _header(response, "x-infergraph-tier"),
        "retry_after": _number(_header(response, "retry-after")),
        "sentences": context["sentences"],
        "deadline_ms": context["deadline_ms"],
        "error": repr(exception)[:200] if status == 0 and exception is not None else None,
    }
    for key in ("audio_s", "ttft_ms", "output_tokens", "tokens_per_s", "max_tokens"):
        if context.get(key) is not None:
            record[key] = context[key]
    return record


@events.request.add_listener
def _log_request(context: dict[str, Any] | None = None, response: Any = None, **meta: Any) -> None:
    if _State.log_file is None or _State.environment is None or not context or "tier" not in context:
        return
    _State.log_file.write(json.dumps(_record(_State.environment, context, response, **meta)) + "\n")


def admin_usage(environment: Environment) -> dict[str, Any] | None:
    """GET /admin/usage (per-tenant requests, compute seconds and cost): None without an admin key,
    {"error": ...} when the service does not answer it."""
    opts = environment.parsed_options
    if opts is None or not opts.ig_admin_key:
        return None
    host = (environment.host or opts.host or TierUser.host).rstrip("/")
    request = urllib.request.Request(
        f"{host}/admin/usage", headers={"Authorization": f"Bearer {opts.ig_admin_key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            usage = json.loads(answer.read())
        return {
            "at": time.time(),
            "price_per_replica_hour": usage.get("price_per_replica_hour"),
            "tenants": usage.get("tenants") or {},
        }
    except Exception as exc:
        return {"error": repr(exc)[:200]}


def _write_meta(environment: Environment, final: bool) -> None:
    if _State.meta_path is None or environment.parsed_options is None:
        return
    opts = environment.parsed_options
    shape = environment.shape_class
    phases = []
    if isinstance(shape, IgShape) and shape.runner is not None:
        phases = [{"phase": s.phase, "duration_s": s.duration_s, "users": s.users} for s in shape.stages()]
    meta = {
        "locust_version": locust.__version__,
        "host": environment.host or opts.host or TierUser.host,
        "shape": opts.ig_shape,
        "phases": phases,
        "started_epoch": _State.started_epoch,
        "finished_epoch": time.time() if final else None,
        "sent": dict(_State.sent),
        "sent_by_name": dict(_State.sent_by_name),
        "abandoned_in_flight": dict(_State.abandoned),
        "deadline_ms": {t: getattr(opts, f"ig_{t}_deadline_ms") or DEFAULT_DEADLINE_MS[t] for t in TIERS},
        "kinds": {t: dict(zip(*_State.mixes[t], strict=True)) for t in _State.mixes},
        "options": {k: v for k, v in vars(opts).items() if k.startswith("ig_") and not k.endswith("_key")},
        "usage_before": _State.usage_before,
        "usage_after": _State.usage_after,
        "final": final,
    }
    _State.meta_path.write_text(json.dumps(meta, indent=2) + "\n")


@events.init.add_listener
def _on_init(environment: Environment, **_kw: Any) -> None:
    # gevent's loop caches its clock and has not run since it was created at import: timers set now
    # (Locust's --run-time) would fire early by the start-up time. Refresh the clock.
    gevent.get_hub().loop.update_now()
    opts = environment.parsed_options
    if opts is None:  # Locust used as a library without options: nothing to configure
        return
    _State.environment = environment
    _State.mixes = {}
    for tier in TIERS:
        mix = tier_mix(opts, tier)
        _State.mixes[tier] = (list(mix), list(mix.values()))
    kinds = {k for ks, _w in _State.mixes.values() for k in ks}
    _State.corpus = load_corpus(path=opts.ig_corpus)
    _State.prompts = load_prompts(opts.ig_prompts) if "chat" in kinds else []
    _State.clips = load_clips(Path(opts.ig_audio_dir)) if "transcriptions" in kinds else []
    for tier, cls in USER_CLASSES.items():
        weight = getattr(opts, f"ig_{tier}_weight")
        if weight < 1:
            raise ValueError(
                f"--ig-{tier}-weight must be >= 1 (leave the tier out by naming the other classes)"
            )
        cls.weight = weight
        cls.fixed_count = max(0, getattr(opts, f"ig_{tier}_users"))
        rps = getattr(opts, f"ig_{tier}_rps")
        cls.wait_time = poisson_pacing(rps) if rps > 0 else constant(0)
        cls.network_timeout = cls.connection_timeout = opts.ig_timeout_s
    if opts.ig_shape == "none":
        environment.shape_class = None
        _State.started_epoch = time.time()
    elif opts.num_users:
        log.warning(
            "--ig-shape %s sets the user count itself; -u %s is ignored", opts.ig_shape, opts.num_users
        )
    if opts.ig_log:
        path = Path(opts.ig_log)
        path.parent.mkdir(parents=True, exist_ok=True)
        _State.log_file = open(path, "w", buffering=1, encoding="utf-8")  # noqa: SIM115 (closed at quit)
        _State.meta_path = path.with_suffix(".meta.json")
        _write_meta(environment, final=False)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_kw: Any) -> None:
    if environment.shape_class is None:
        _State.started_epoch = time.time()
    if _State.meta_path is not None:
        _State.usage_before = admin_usage(environment)
    _write_meta(environment, final=False)


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_kw: Any) -> None:
    # Users are stopped by now; let the requests they left in flight finish (bounded by the timeout).
    if len(_State.pending) and environment.parsed_options is not None:
        log.info("waiting for %d requests still in flight", len(_State.pending))
        _State.pending.join(timeout=environment.parsed_options.ig_timeout_s + 5)
        for g in list(_State.pending):
            _State.abandoned[g.args[0].tier] += 1
    if _State.log_file is not None:
        _State.log_file.close()
        _State.log_file = None
    if _State.meta_path is not None and _State.usage_before is not None:
        _State.usage_after = admin_usage(environment)
    _write_meta(environment, final=True)
