"""The load test across kinds: the report on hand-made logs of every kind (per-kind tables, SLO
attainment, chat tokens/s, speech audio s/s, cost, an MLflow run in a temporary store), the shapes'
stages, and one real short Locust run against a stub server that answers every route.

Locust monkey-patches its process with gevent, so it runs (and the locustfile is imported) only in
subprocesses; the real service is covered by tests/integration/test_loadtest_kinds.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from loadtest import report as rep
from loadtest.audio_clips import check, load_clips

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = {"premium": 1000, "standard": 5000, "batch": 30000}


def rec(
    kind: str, tier: str, status: int = 200, latency: float = 100.0, t: float = 1000.0, **kw: Any
) -> dict:
    return {
        "t": t,
        "tier": tier,
        "kind": kind,
        "model": "m",
        "tenant": 0,
        "phase": kw.pop("phase", "steady"),
        "status": status,
        "code": kw.pop("code", None),
        "latency_ms": latency,
        "queue_ms": 1.0 if status == 200 else None,
        "served_tier": tier if status == 200 else None,
        "retry_after": kw.pop("retry_after", None),
        "sentences": kw.pop("sentences", 1 if kind in ("embeddings", "rerank") else 0),
        "deadline_ms": DEADLINE[tier],
        "error": None,
        **kw,
    }


def mixed_run() -> tuple[list[dict], dict]:
    records = [
        # embeddings premium: 3 in time, 1 late, 1 refused
        *(
            rec("embeddings", "premium", latency=ms, t=1000 + i)
            for i, ms in enumerate([50.0, 80.0, 900.0, 1500.0])
        ),
        rec("embeddings", "premium", 429, latency=2.0, t=1004, code="queue_full", retry_after=1),
        # rerank standard: 2 answered, 1 deadline refusal
        rec("rerank", "standard", latency=300.0, sentences=10, t=1001),
        rec("rerank", "standard", latency=400.0, sentences=20, t=1002),
        rec("rerank", "standard", 503, latency=5.0, code="deadline_exceeded", t=1003),
        # chat premium: judged on time to first token (latency of the whole stream is over 1 s)
        rec("chat", "premium", latency=3000.0, ttft_ms=200.0, output_tokens=100, tokens_per_s=40.0, t=1000),
        rec("chat", "premium", latency=2500.0, ttft_ms=1200.0, output_tokens=60, tokens_per_s=30.0, t=1001),
        rec(
            "chat",
            "premium",
            200,
            latency=800.0,
            code="stream_incomplete",
            ttft_ms=100.0,
            output_tokens=5,
            t=1002,
        ),
        # transcriptions batch: 2 clips answered
        rec("transcriptions", "batch", latency=400.0, audio_s=4.0, t=1000),
        rec("transcriptions", "batch", latency=600.0, audio_s=6.0, t=1005),
        rec("embeddings", "standard", latency=100.0, t=1009.9),  # the last answer: the run is 10 s long
    ]
    names = {
        "embeddings premium": 5,
        "embeddings standard": 1,
        "rerank standard": 3,
        "chat premium": 4,
        "transcriptions batch": 2,
    }
    usage = {
        "before": {"demo-premium": {"requests": 10, "answered": 10, "rejected": 0, "compute_s": 1.0}},
        "after": {
            "demo-premium": {"requests": 18, "answered": 14, "rejected": 1, "compute_s": 8.2},
            "demo-batch": {"requests": 2, "answered": 2, "rejected": 0, "compute_s": 0.8},
            "idle": {"requests": 0, "answered": 0, "rejected": 0, "compute_s": 0.0},
        },
    }
    meta = {
        "started_epoch": 1000.0,
        "shape": "steady",
        "phases": [{"phase": "steady", "duration_s": 10, "users": 4}],
        "sent": {"premium": 9, "standard": 4, "batch": 2},
        "sent_by_name": names,
        "deadline_ms": DEADLINE,
        "kinds": {
            "premium": {"embeddings": 1, "chat": 1},
            "standard": {"embeddings": 1, "rerank": 1},
            "batch": {"transcriptions": 1},
        },
        "options": {"ig_kinds": "embeddings:1,rerank:1,chat:1,transcriptions:1", "ig_shape": "steady"},
        "locust_version": "2.x",
        "usage_before": {"at": 1, "price_per_replica_hour": 3.6, "tenants": usage["before"]},
        "usage_after": {"at": 2, "price_per_replica_hour": 3.6, "tenants": usage["after"]},
    }
    return records, meta


def test_per_kind_tables_attainment_tokens_and_audio():
    records, meta = mixed_run()
    s = rep.summarize(records, meta)
    assert list(s["kinds"]) == ["embeddings", "rerank", "chat", "transcriptions"]
    emb = s["kinds"]["embeddings"]["premium"]
    assert emb["sent"] == 5 and emb["answered"] == 4 and emb["rejected"] == {"queue_full": 1}
    assert emb["slo_attainment_pct"] == 60.0  # 3 of 5 sent answered within 1,000 ms
    rr = s["kinds"]["rerank"]["standard"]
    assert rr["rejected"] == {"deadline_exceeded": 1} and rr["slo_attainment_pct"] == pytest.approx(66.67)
    assert rr["sentences_per_s"] == 3.0  # 30 documents over the 10 s run
    chat = s["kinds"]["chat"]["premium"]
    # one lost in flight (4 sent, 3 logged), one stream broke off: 1 of 4 attained (TTFT 200 ms)
    assert chat["answered"] == 2 and chat["other_errors"] == {"200 stream_incomplete": 1}
    assert chat["lost_in_flight"] == 1 and chat["slo_attainment_pct"] == 25.0
    assert chat["ttft_ms"]["p50"] == 700.0 and chat["output_tokens"] == 160
    assert chat["tokens_per_s"] == 16.0 and chat["decode_tokens_per_s"]["p50"] == 35.0
    speech = s["kinds"]["transcriptions"]["batch"]
    assert speech["audio_s"] == 10.0 and speech["audio_s_per_s"] == 1.0
    assert speech["real_time_factor"]["p50"] == 0.1 and speech["slo_attainment_pct"] == 100.0
    assert s["kinds"]["chat"]["all"]["sent"] == 4
    # per tier, over kinds
    assert s["tiers"]["premium"]["sent"] == 9 and s["tiers"]["premium"]["answered"] == 6
    assert s["accounting"]["balanced"] is False  # the chat request lost in flight
    assert s["phases"]["steady"]["premium"]["completed"] == 8


def test_cost_per_1000_requests_from_admin_usage():
    records, meta = mixed_run()
    cost = rep.summarize(records, meta)["cost"]
    assert set(cost["tenants"]) == {"demo-premium", "demo-batch"}  # idle tenants are left out
    prem = cost["tenants"]["demo-premium"]
    assert prem["requests"] == 8 and prem["answered"] == 4 and prem["compute_s"] == pytest.approx(7.2)
    # 7.2 compute-s at 3.6 per replica-hour = 0.0072; per 1,000 of 4 answered = 1.8
    assert prem["cost"] == pytest.approx(0.0072) and prem["cost_per_1k_requests"] == pytest.approx(1.8)
    assert cost["cost_per_1k_requests"] == pytest.approx(1000 * 0.008 / 6)
    assert rep.summarize(records, {**meta, "usage_after": None})["cost"] is None
    broken = rep.summarize(records, {**meta, "usage_after": {"error": "HTTPError 401"}})["cost"]
    assert broken == {"error": "HTTPError 401"}


def test_locust_stats_are_checked_per_kind_and_tier():
    records, _meta = mixed_run()
    stats = {
        "embeddings premium": {"requests": 5, "failures": 1},
        "embeddings standard": {"requests": 1, "failures": 0},
        "rerank standard": {"requests": 3, "failures": 1},
        "chat premium": {"requests": 3, "failures": 1},  # the broken stream is a failure
        "transcriptions batch": {"requests": 2, "failures": 0},
    }
    assert rep.summarize(records, None, stats)["accounting"]["locust_stats"]["matches"] is True
    stats["chat premium"] = {"requests": 3, "failures": 0}
    mismatch = rep.summarize(records, None, stats)["accounting"]["locust_stats"]["mismatches"]
    assert [m["tier"] for m in mismatch] == ["chat premium"]


def test_report_prints_kinds_and_logs_an_mlflow_run(tmp_path, capsys):
    from mlflow import MlflowClient

    records, meta = mixed_run()
    run = tmp_path / "run"
    run.mkdir()
    (run / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "requests.meta.json").write_text(json.dumps(meta))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [str(run), "--mlflow", "--tracking-uri", uri, "--artifact-root", str(tmp_path / "artifacts")]
    assert rep.main([*argv, "--run-name", "kinds test"]) == 0
    out = capsys.readouterr().out
    assert "Per kind and tier" in out and "stream_incomplete" in out and "Cost per tenant" in out
    assert (run / "kinds.png").stat().st_size > 10_000 and (run / "report.png").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["kinds"]["transcriptions"]["batch"]["audio_s_per_s"] == 1.0

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("loadtest")
    assert experiment is not None
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "kinds test"
    assert found.data.params["shape"] == "steady"
    assert found.data.params["ig.kinds"] == "embeddings:1,rerank:1,chat:1,transcriptions:1"
    assert found.data.params["kinds.premium"] == "embeddings:1,chat:1"
    assert found.data.params["kinds.standard"] == "embeddings:1,rerank:1"
    m = found.data.metrics
    assert m["embeddings/premium/slo_attainment_pct"] == 60.0
    assert m["chat/premium/ttft_p99_ms"] == pytest.approx(1190.0)
    assert m["transcriptions/batch/audio_s_per_s"] == 1.0
    assert m["tier/premium/sent"] == 9 and m["cost/per_1k_requests"] > 0
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"summary.json", "kinds.png", "report.png", "requests.meta.json", "requests.jsonl"} <= artifacts

    # a second report of the same run is a second run in the same experiment
    assert rep.main([*argv, "--no-plot"]) == 0
    assert len(client.search_runs([experiment.experiment_id])) == 2


def test_the_committed_audio_clips_are_intact():
    clips = load_clips()
    assert check() == []
    assert len(clips) >= 3 and all(c.data[:4] == b"fLaC" for c in clips)
    assert all(1.0 < c.duration_s < 15.0 for c in clips)
    assert sum(len(c.data) for c in clips) < 600_000


SHAPES_SCRIPT = """
import json, types, loadtest.locustfile as lf
o = types.SimpleNamespace(ig_base_users=4, ig_spawn_rate=50.0, ig_steady_s=60.0, ig_steps=3, ig_step_users=2,
    ig_step_s=30.0, ig_spike_factor=5.0, ig_spike_s=10.0, ig_soak_s=100000.0, ig_soak_window_s=3600.0,
    ig_overload_factor=3.0, ig_warmup_s=30.0, ig_overload_s=60.0, ig_recover_s=30.0)
stages = {n: [[s.phase, s.duration_s, s.users, s.spawn_rate] for s in f(o)] for n, f in lf.SHAPES.items()}
print(json.dumps(stages))
print(json.dumps({name: bool((f.__doc__ or "").strip()) for name, f in lf.SHAPES.items()}))
print(json.dumps([lf.parse_mix("embeddings:6, rerank:2,chat"), lf.tier_mix(types.SimpleNamespace(
    ig_kinds="rerank:1,chat:2", ig_batch_kinds=""), "batch"), lf.tier_mix(types.SimpleNamespace(
    ig_kinds="embeddings:3,chat:2,transcriptions", ig_batch_kinds=""), "batch")]))
for bad in ("speech:1", "chat:0", ""):
    try:
        lf.parse_mix(bad)
        print("accepted", bad)
    except ValueError:
        pass
"""


def test_shapes_and_kind_mixes():
    proc = subprocess.run(
        [sys.executable, "-c", SHAPES_SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    shapes_line, docs_line, mixes_line, *rest = proc.stdout.splitlines()
    assert rest == []  # every bad mix was refused
    shapes = json.loads(shapes_line)
    assert set(shapes) == {"steady", "step", "spike", "soak", "overload"}
    assert all(json.loads(docs_line).values())
    assert shapes["steady"] == [["steady", 60.0, 4, 50.0]]
    assert [(p, u) for p, _d, u, _r in shapes["step"]] == [("step1", 4), ("step2", 6), ("step3", 8)]
    assert [(p, d, u) for p, d, u, _r in shapes["spike"]] == [
        ("warmup", 30, 4),
        ("spike", 10, 20),
        ("recover", 30, 4),
    ]
    assert shapes["spike"][1][3] >= 20  # every spike user starts within a second
    soak = shapes["soak"]  # bounded at 24 h, in windows
    assert len(soak) == 24 and sum(d for _p, d, _u, _r in soak) == 86_400 and soak[-1][0] == "soak24"
    assert [u for _p, _d, u, _r in shapes["overload"]] == [4, 12, 4]
    for stages in shapes.values():
        assert 0 < sum(d for _p, d, _u, _r in stages) <= 86_400
    mix, batch_limited, batch_subset = json.loads(mixes_line)
    assert mix == {"embeddings": 6.0, "rerank": 2.0, "chat": 1.0}
    assert batch_limited == {"rerank": 1.0, "chat": 2.0}  # nothing the batch tenant may use: all
    assert batch_subset == {"embeddings": 3.0, "transcriptions": 1.0}


# --------------------------------------------------------------------------- a real Locust run


class _Stub(BaseHTTPRequestHandler):
    """Answers each route as the API does (checking the request's shape: 400 when it is wrong),
    streams chat as server-sent events with a known first-token delay, breaks every 5th stream off,
    and counts requests for GET /admin/usage."""

    lock = threading.Lock()
    seen: dict[str, int] = {}
    chats = 0
    TOKENS = 6
    FIRST_TOKEN_S = 0.08

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in {
            **(headers or {}),
            "Content-Type": "application/json",
            "Content-Length": str(len(raw)),
        }.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:  # noqa: N802
        if self.path != "/admin/usage" or self.headers.get("Authorization") != "Bearer sk-ig-admin":
            return self._send(401, {"error": {"code": "invalid_api_key"}})
        with _Stub.lock:
            tenants = {
                key: {"requests": n, "answered": n, "rejected": 0, "compute_s": 0.01 * n}
                for key, n in _Stub.seen.items()
            }
        self._send(200, {"price_per_replica_hour": 0.5, "tenants": tenants})

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        tenant = self.headers.get("Authorization", "").removeprefix("Bearer ")
        with _Stub.lock:
            _Stub.seen[tenant] = _Stub.seen.get(tenant, 0) + 1
        ok = {"x-infergraph-tier": "x", "x-infergraph-queue-ms": "1.5"}
        if self.path == "/v1/audio/transcriptions":
            ctype = self.headers.get("Content-Type", "")
            if not ctype.startswith("multipart/form-data; boundary=") or b"fLaC" not in raw:
                return self._send(400, {"error": {"code": "invalid_audio"}})
            if b'name="model"\r\n\r\nwhisper-tiny.en\r\n' not in raw:
                return self._send(400, {"error": {"code": "invalid_request"}})
            return self._send(200, {"text": "words", "usage": {"type": "duration", "seconds": 3}}, ok)
        body = json.loads(raw)
        if self.path == "/v1/embeddings":
            n = len(body["input"]) if isinstance(body["input"], list) else 1
            return self._send(200, {"data": [{"embedding": [0.0], "index": i} for i in range(n)]}, ok)
        if self.path == "/v1/rerank":
            if not body["query"] or not 8 <= len(body["documents"]) <= 24:
                return self._send(400, {"error": {"code": "invalid_request"}})
            return self._send(200, {"results": [{"index": 0, "relevance_score": 0.5}]}, ok)
        if self.path == "/v1/chat/completions":
            if body.get("stream") is not True or not body["messages"] or body.get("temperature") != 0:
                return self._send(400, {"error": {"code": "invalid_request"}})
            return self._stream()
        return self._send(404, {"error": {"code": "not_found"}})

    def _stream(self) -> None:
        with _Stub.lock:
            _Stub.chats += 1
            broken = _Stub.chats % 5 == 0

        def event(payload: Any) -> bytes:
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        def choice(delta: dict, finish: str | None = None) -> dict:
            return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": None}

        events = [event(choice({"role": "assistant", "content": ""}))]
        events += [event(choice({"content": f" t{i}"})) for i in range(self.TOKENS)]
        events += [event(choice({}, "length"))]
        events += [event({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": self.TOKENS}})]
        events += [b"data: [DONE]\n\n"]
        if broken:
            events = events[:4]  # the connection ends before [DONE]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(sum(map(len, events))))
        self.end_headers()
        self.wfile.write(events[0])
        self.wfile.flush()
        time.sleep(self.FIRST_TOKEN_S)
        for e in events[1:]:
            self.wfile.write(e)
            self.wfile.flush()
            time.sleep(0.01)

    def log_message(self, *args: Any) -> None:
        pass


def test_locust_drives_every_kind_with_a_shape(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cmd = [
            sys.executable, "-m", "locust", "-f", "loadtest/", "--headless", "--only-summary",
            "-H", f"http://127.0.0.1:{server.server_address[1]}",
            "--ig-kinds", "embeddings:1,rerank:1,chat:1,transcriptions:1",
            "--ig-shape", "step", "--ig-steps", "2", "--ig-step-s", "2", "--ig-base-users", "3",
            "--ig-step-users", "3", "--ig-premium-rps", "6", "--ig-standard-rps", "6", "--ig-batch-rps", "6",
            "--ig-premium-key", "sk-premium-a,sk-premium-b", "--ig-batch-weight", "1",
            "--ig-log", str(tmp_path / "requests.jsonl"), "--json-file", str(tmp_path / "locust"),
            "--csv", str(tmp_path / "locust"), "--html", str(tmp_path / "locust.html"),
        ]  # fmt: skip
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    assert proc.returncode == 1, proc.stderr[-3000:]  # the broken streams are failures
    summary = rep.report(tmp_path, make_plot=False, quiet=True)
    assert summary["accounting"]["balanced"] is True, summary["accounting"]
    assert summary["accounting"]["locust_stats"]["matches"] is True
    kinds = summary["kinds"]
    assert set(kinds) == {"embeddings", "rerank", "chat", "transcriptions"}
    # the batch tier's mix keeps the kinds its demo tenant may use
    assert set(kinds["chat"]) == set(kinds["rerank"]) == {"premium", "standard", "all"}
    assert set(kinds["embeddings"]) == set(kinds["transcriptions"]) == {"premium", "standard", "batch", "all"}
    for kind, tiers in kinds.items():
        assert tiers["all"]["answered"] > 0, kind
        assert all(s["http_errors"] == 0 or kind == "chat" for s in tiers.values()), (kind, tiers)
    chat = kinds["chat"]["all"]
    assert set(chat["other_errors"]) == {"200 stream_incomplete"}
    assert chat["output_tokens"] == chat["answered"] * _Stub.TOKENS
    assert _Stub.FIRST_TOKEN_S * 1000 <= chat["ttft_ms"]["p50"] < 1000
    assert chat["decode_tokens_per_s"]["p50"] > 10 and chat["tokens_per_s"] > 0
    # the stream's duration, not the time to its headers, is the request's latency
    assert chat["latency_ms"]["p50"] >= chat["ttft_ms"]["p50"] + 4 * 10
    durations = {c.duration_s for c in load_clips()}
    lines = [json.loads(x) for x in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert {x["audio_s"] for x in lines if x["kind"] == "transcriptions"} <= durations
    assert kinds["transcriptions"]["all"]["audio_s_per_s"] > 0
    assert {x["phase"] for x in lines} <= {"step1", "step2"}
    assert {x["tenant"] for x in lines if x["tier"] == "premium"} == {0, 1}
    locust_names = {e["name"] for e in json.loads((tmp_path / "locust.json").read_text())}
    assert locust_names == {f"{k} {t}" for k, ts in kinds.items() for t in ts if t != "all"}
    meta = json.loads((tmp_path / "requests.meta.json").read_text())
    assert [p["phase"] for p in meta["phases"]] == ["step1", "step2"] and meta["final"] is True
    assert meta["kinds"]["batch"] == {"embeddings": 1.0, "transcriptions": 1.0}
    # /admin/usage before and after: the cost of what this run sent, per tenant (key, in the stub)
    cost = summary["cost"]
    assert set(cost["tenants"]) == {"sk-premium-a", "sk-premium-b", "sk-ig-demo-standard", "sk-ig-demo-batch"}
    assert sum(t["requests"] for t in cost["tenants"].values()) == len(lines)
    assert (tmp_path / "locust_stats.csv").exists() and (tmp_path / "locust.html").exists()
