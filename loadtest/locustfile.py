"""Locust load test of `POST /v1/embeddings`: one user class per QoS tier, an overload shape, a request log.

    uv run locust -f loadtest/ --headless -H http://127.0.0.1:8000 \\
        --ig-shape overload --ig-base-users 32 --ig-log results/overload/manual/requests.jsonl \\
        --csv results/overload/manual/locust
    uv run python -m loadtest.report results/overload/manual

`-f loadtest/locustfile.py` is the same test (`-f loadtest/` imports every `*.py` in the folder that
does not start with `_`; `report.py` is imported too and defines nothing Locust picks up).

Users: PremiumUser, StandardUser, BatchUser, each sending with its tier's API key. Premium and
standard send mostly one sentence, sometimes a short list; batch sends lists of 16-32 sentences.
Every request is named after its tier, so Locust's stats and `--csv` files are per tier; a non-200
answer is a failure named "<status> <error code>". Tier mix: `--ig-<tier>-weight` or a fixed
`--ig-<tier>-users`; pace: `--ig-<tier>-rps` requests/s per user (0: back to back). To leave a
tier out, name the classes to run: `locust -f loadtest/ PremiumUser StandardUser`.

Shape: `--ig-shape none` (default) is plain Locust (-u/-r/-t). `--ig-shape overload` runs
warm-up at `--ig-base-users` for `--ig-warmup-s`, then `--ig-overload-factor` times as many users
for `--ig-overload-s`, then back to the base for `--ig-recover-s`, then stops (-u is ignored;
-t still caps the run).

Log: with `--ig-log PATH`, every completed request is one JSON line (see `_record`) and
`PATH` with suffix `.meta.json` holds the options, the phases and how many requests each tier
sent, so the report can tell requests lost in flight (sent but never completed) from answers.

Keys: `--ig-<tier>-key` or the env vars INFERGRAPH_PREMIUM_KEY, INFERGRAPH_STANDARD_KEY,
INFERGRAPH_BATCH_KEY (defaults: the demo tenants of configs/tenants.yaml).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

import gevent
import locust
from gevent.pool import Group
from locust import FastHttpUser, LoadTestShape, constant, events, task
from locust.env import Environment

from infergraph.corpus import CORPUS, load_corpus  # stdlib only: nothing heavy in this gevent-patched process

TIERS = ("premium", "standard", "batch")
DEFAULT_KEYS = {
    "premium": "sk-ig-demo-premium",
    "standard": "sk-ig-demo-standard",
    "batch": "sk-ig-demo-batch",
}
# The tiers' default deadlines (configs/tenants.yaml); X-Deadline-Ms can only tighten them.
DEFAULT_DEADLINE_MS = {"premium": 1000, "standard": 5000, "batch": 30000}
DEFAULT_WEIGHT = {"premium": 1, "standard": 1, "batch": 6}
# Requests/s per user. 24 users of this mix (3 premium, 3 standard, 18 batch) offer ~9.6 requests/s,
# ~100 sentences/s: about what the English encoder sustains on the 2-core reference box.
# Interactive tiers send one sentence (or a short list), bulk batch-tier work 16-32, so the model
# and not Serve's per-request cost is the limit. Many slow-paced batch users keep the offered load
# up when the service slows down (each user waits for its answer, as a closed loop does).
DEFAULT_RPS = {"premium": 1.0, "standard": 1.0, "batch": 0.2}
ENDPOINT = "/v1/embeddings"

log = logging.getLogger("infergraph.loadtest")


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    g = parser.add_argument_group("infergraph", "Options of loadtest/locustfile.py")
    g.add_argument(
        "--ig-model", default="all-MiniLM-L6-v2", env_var="INFERGRAPH_MODEL", help="model asked for"
    )
    g.add_argument("--ig-corpus", default=str(CORPUS), help="JSONL with a 'text' field per line")
    for tier in TIERS:
        g.add_argument(
            f"--ig-{tier}-key",
            default=DEFAULT_KEYS[tier],
            env_var=f"INFERGRAPH_{tier.upper()}_KEY",
            help=f"API key of the {tier} users",
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
    g.add_argument("--ig-timeout-s", type=float, default=60.0, help="client connect and read timeout")
    g.add_argument("--ig-seed", type=int, default=0, help="seed of the inputs each user picks")
    g.add_argument("--ig-log", default="", help="write one JSON line per request here (+ .meta.json)")
    g.add_argument("--ig-shape", choices=["none", "overload"], default="none", help="load shape")
    g.add_argument("--ig-base-users", type=int, default=32, help="overload shape: users at the base")
    g.add_argument("--ig-overload-factor", type=float, default=3.0, help="overload shape: users x this")
    g.add_argument("--ig-warmup-s", type=float, default=30.0, help="overload shape: base before the step")
    g.add_argument("--ig-overload-s", type=float, default=60.0, help="overload shape: length of the step")
    g.add_argument("--ig-recover-s", type=float, default=30.0, help="overload shape: base after the step")
    g.add_argument("--ig-spawn-rate", type=float, default=50.0, help="overload shape: users started/s")


class _State:
    """Process-wide state of the run (Locust runs one test per process)."""

    corpus: list[str] = []
    log_file: IO[str] | None = None
    meta_path: Path | None = None
    sent: Counter[str] = Counter()
    pending = Group()  # requests in flight (see TierUser.embed)
    abandoned: Counter[str] = Counter()  # still in flight when Locust exited
    user_ids = itertools.count()
    started_epoch: float | None = None
    environment: Environment | None = None


def poisson_pacing(rps: float) -> Any:
    """Like Locust's constant_throughput, but with exponential gaps: each user is a Poisson source of
    `rps` requests/s (while its requests keep up), so users do not fire in lock-step bursts."""

    def wait(user: Any) -> float:
        now = time.monotonic()
        next_start = max(getattr(user, "_next_start", now), now - 1 / rps) + user.rng.expovariate(rps)
        user._next_start = next_start
        return max(0.0, next_start - now)

    return wait


class TierUser(FastHttpUser):
    abstract = True
    host = "http://127.0.0.1:8000"
    tier = ""
    wait_time = constant(0)  # replaced by --ig-<tier>-rps at init

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.rng = random.Random(f"{opts.ig_seed}-{self.tier}-{next(_State.user_ids)}")
        self.model: str = opts.ig_model
        self.headers = {"Authorization": f"Bearer {getattr(opts, f'ig_{self.tier}_key')}"}
        self.deadline_ms: int = getattr(opts, f"ig_{self.tier}_deadline_ms") or DEFAULT_DEADLINE_MS[self.tier]
        if getattr(opts, f"ig_{self.tier}_deadline_ms"):
            self.headers["X-Deadline-Ms"] = str(self.deadline_ms)

    def sentences(self) -> int:
        opts = self.environment.parsed_options
        if self.rng.random() < opts.ig_list_share:
            return self.rng.randint(2, max(2, opts.ig_list_max))
        return 1

    @task
    def embed(self) -> None:
        n = self.sentences()
        texts = self.rng.sample(_State.corpus, n) if n > 1 else [self.rng.choice(_State.corpus)]
        body = {"model": self.model, "input": texts if n > 1 else texts[0]}
        # The request runs in a greenlet of its own: Locust kills users when it ramps down or stops,
        # and even with --stop-timeout a user whose wait just ended can be killed mid-request (a race
        # in User.stop). A killed user's request still completes, is logged, and counts in the stats.
        _State.sent[self.tier] += 1
        _State.pending.spawn(TierUser.send, self, body, n).get()

    def send(self, body: dict[str, Any], n: int) -> None:
        context = {"tier": self.tier, "sentences": n, "deadline_ms": self.deadline_ms}
        with self.client.post(
            ENDPOINT, json=body, headers=self.headers, name=self.tier, context=context, catch_response=True
        ) as resp:
            if resp.status_code == 200:
                resp.success()
            elif resp.status_code:  # an HTTP error: name it by status and code in Locust's failure stats
                resp.failure(f"{resp.status_code} {error_code(resp) or 'no_code'}")
            # status 0 (connection error, timeout): Locust records the exception itself


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


class OverloadShape(LoadTestShape):
    """`--ig-shape overload`: base users, a step to factor x base, back to base, stop.

    With `--ig-shape none` the init hook removes the shape, and Locust's -u/-r/-t work as usual
    (use_common_options keeps Locust from warning that they are ignored).
    """

    use_common_options = True

    def reset_time(self) -> None:
        super().reset_time()
        _State.started_epoch = time.time()

    def stages(self) -> list[tuple[str, float, int]]:
        """(phase, duration s, users) from the options."""
        assert self.runner is not None and self.runner.environment.parsed_options is not None
        o = self.runner.environment.parsed_options
        high = max(1, round(o.ig_base_users * o.ig_overload_factor))
        return [
            ("warmup", o.ig_warmup_s, o.ig_base_users),
            ("overload", o.ig_overload_s, high),
            ("recover", o.ig_recover_s, o.ig_base_users),
        ]

    def phase_at(self, elapsed_s: float) -> str:
        """The phase a request sent at elapsed_s belongs to; sends in the last second before Locust
        stops (it checks the shape once a second) count to the last phase."""
        end = 0.0
        stages = self.stages()
        for name, duration, _users in stages:
            end += duration
            if elapsed_s < end:
                return name
        return stages[-1][0]

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None and self.runner.environment.parsed_options is not None
        elapsed = self.get_run_time()
        end = 0.0
        for _name, duration, users in self.stages():
            end += duration
            if elapsed < end:
                return users, self.runner.environment.parsed_options.ig_spawn_rate
        return None


def _phase(environment: Environment, sent_epoch: float) -> str:
    shape = environment.shape_class
    if not isinstance(shape, OverloadShape) or _State.started_epoch is None:
        return "constant"
    return shape.phase_at(sent_epoch - _State.started_epoch)


def _record(environment: Environment, context: dict[str, Any], response: Any, **meta: Any) -> dict[str, Any]:
    status = int(getattr(response, "status_code", 0) or 0)
    exception = meta.get("exception")
    sent = float(meta.get("start_time") or time.time())
    return {
        "t": round(sent, 4),  # epoch s when sent
        "tier": context["tier"],
        "phase": _phase(environment, sent),
        "status": status,  # 0: no HTTP answer (connection error, timeout)
        "code": error_code(response) if status not in (0, 200) else None,
        "latency_ms": round(float(meta.get("response_time") or 0.0), 3),
        "queue_ms": _number(_header(response, "x-infergraph-queue-ms")),
        "model_ms": _number(_header(response, "x-infergraph-model-ms")),
        "served_tier": _header(response, "x-infergraph-tier"),
        "retry_after": _number(_header(response, "retry-after")),
        "sentences": context["sentences"],
        "deadline_ms": context["deadline_ms"],
        "error": repr(exception)[:200] if status == 0 and exception is not None else None,
    }


@events.request.add_listener
def _log_request(context: dict[str, Any] | None = None, response: Any = None, **meta: Any) -> None:
    if _State.log_file is None or _State.environment is None or not context or "tier" not in context:
        return
    _State.log_file.write(json.dumps(_record(_State.environment, context, response, **meta)) + "\n")


def _write_meta(environment: Environment, final: bool) -> None:
    if _State.meta_path is None or environment.parsed_options is None:
        return
    opts = environment.parsed_options
    shape = environment.shape_class
    phases = []
    if isinstance(shape, OverloadShape) and shape.runner is not None:
        phases = [{"phase": n, "duration_s": d, "users": u} for n, d, u in shape.stages()]
    meta = {
        "locust_version": locust.__version__,
        "host": environment.host or opts.host or TierUser.host,
        "shape": opts.ig_shape,
        "phases": phases,
        "started_epoch": _State.started_epoch,
        "finished_epoch": time.time() if final else None,
        "sent": dict(_State.sent),
        "abandoned_in_flight": dict(_State.abandoned),
        "deadline_ms": {t: getattr(opts, f"ig_{t}_deadline_ms") or DEFAULT_DEADLINE_MS[t] for t in TIERS},
        "options": {k: v for k, v in vars(opts).items() if k.startswith("ig_") and not k.endswith("_key")},
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
    _State.corpus = load_corpus(path=opts.ig_corpus)
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
        log.warning("--ig-shape overload sets the user count itself; -u %s is ignored", opts.num_users)
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
    _write_meta(environment, final=True)
