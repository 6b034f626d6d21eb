"""loadtest/report.py on hand-made request logs, and the locustfile's log against a stub server.

The report must never import locust (gevent monkey-patching), so the one Locust run here is a
subprocess against a stdlib HTTP server in this process; the real service is not started.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadtest import report as rep

ROOT = Path(__file__).resolve().parents[2]


def rec(tier: str, status: int = 200, latency: float = 10.0, t: float = 1000.0, **kw: Any) -> dict[str, Any]:
    deadline = {"premium": 1000, "standard": 5000, "batch": 30000}[tier]
    return {
        "t": t,
        "tier": tier,
        "phase": kw.pop("phase", "constant"),
        "status": status,
        "code": kw.pop("code", None),
        "latency_ms": latency,
        "queue_ms": kw.pop("queue_ms", 1.0 if status == 200 else None),
        "served_tier": tier if status == 200 else None,
        "retry_after": kw.pop("retry_after", None),
        "sentences": kw.pop("sentences", 1),
        "deadline_ms": deadline,
        "error": kw.pop("error", None),
    }


def write_run(tmp_path: Path, records: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> Path:
    with open(tmp_path / "requests.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    if meta is not None:
        (tmp_path / "requests.meta.json").write_text(json.dumps(meta))
    return tmp_path


@pytest.mark.parametrize("p", [0, 1, 25, 50, 90, 95, 99, 100])
def test_percentile_matches_numpy(p):
    values = [float(x) for x in np.random.default_rng(p).exponential(50, size=37)]
    assert rep.percentile(values, p) == pytest.approx(np.percentile(values, p))
    assert np.isnan(rep.percentile([], p))


def test_latency_percentiles_of_answered_only():
    records = [rec("premium", latency=float(ms), t=1000 + ms / 100) for ms in range(1, 101)]
    records += [rec("premium", 429, latency=99999.0, code="queue_full")]  # refused: not in latencies
    s = rep.summarize(records)["tiers"]["premium"]
    assert s["answered"] == 100
    assert s["latency_ms"]["p50"] == pytest.approx(50.5)
    assert s["latency_ms"]["p95"] == pytest.approx(95.05)
    assert s["latency_ms"]["p99"] == pytest.approx(99.01)
    assert s["latency_ms"]["max"] == 100


def test_rejections_counted_per_code_and_tier():
    records = [
        rec("premium"),
        rec("premium", 429, code="queue_full", retry_after=1),
        rec("premium", 429, code="queue_full", retry_after=1),
        rec("premium", 503, code="deadline_exceeded", retry_after=2),
        rec("standard", 429, code="rate_limited"),
        rec("standard", 429, code="quota_exceeded"),
        rec("standard", 401, code="invalid_api_key"),
        rec("batch", 400, code="invalid_request"),
        rec("batch", 429),  # no error body
    ]
    s = rep.summarize(records)
    prem, std, batch = (s["tiers"][t] for t in ("premium", "standard", "batch"))
    assert prem["rejected"] == {"queue_full": 2, "deadline_exceeded": 1}
    assert prem["rejected_total"] == 3 and prem["other_errors"] == {}
    assert prem["retry_after_s"]["max"] == 2
    assert std["rejected"] == {"rate_limited": 1, "quota_exceeded": 1}
    assert std["other_errors"] == {"401 invalid_api_key": 1}
    assert batch["rejected"] == {"429_no_code": 1}
    assert batch["other_errors"] == {"400 invalid_request": 1}
    assert s["total"]["rejected"]["queue_full"] == 2
    assert s["total"]["http_errors"] == 8
    # every request got an HTTP answer: the run balances
    assert s["accounting"]["balanced"] is True
    assert s["accounting"]["sent"] == 9


def test_transport_errors_are_unaccounted():
    records = [rec("standard"), rec("standard", 0, latency=60000.0, error="ConnectionRefusedError()")]
    s = rep.summarize(records, {"sent": {"standard": 2}})
    std = s["tiers"]["standard"]
    assert std["transport_errors"] == 1 and std["unaccounted"] == 1 and std["http_errors"] == 0
    assert s["accounting"]["balanced"] is False


def test_requests_lost_in_flight_break_the_accounting(tmp_path):
    records = [rec("premium"), rec("premium", 429, code="queue_full"), rec("batch", sentences=32)]
    meta = {"sent": {"premium": 3, "batch": 1}, "started_epoch": 999.0}
    s = rep.summarize(records, meta)
    assert s["tiers"]["premium"]["sent"] == 3
    assert s["tiers"]["premium"]["lost_in_flight"] == 1
    assert s["tiers"]["batch"]["lost_in_flight"] == 0
    assert s["accounting"]["lost_in_flight"] == 1
    assert s["accounting"]["balanced"] is False
    # without the meta file, sent = logged: balanced, and the report says where sent came from
    s2 = rep.summarize(records)
    assert s2["accounting"]["balanced"] is True
    assert s2["accounting"]["sent_from"].startswith("log")


def test_more_logged_than_sent_is_a_mismatch():
    s = rep.summarize([rec("premium"), rec("premium")], {"sent": {"premium": 1}})
    assert s["accounting"]["over_logged"] == 1
    assert s["accounting"]["balanced"] is False


def test_locust_stats_cross_check():
    records = [rec("premium"), rec("premium", 429, code="queue_full"), rec("batch")]
    good = {"premium": {"requests": 2, "failures": 1}, "batch": {"requests": 1, "failures": 0}}
    assert rep.summarize(records, None, good)["accounting"]["locust_stats"]["matches"] is True
    bad = {"premium": {"requests": 3, "failures": 1}, "batch": {"requests": 1, "failures": 0}}
    ls = rep.summarize(records, None, bad)["accounting"]["locust_stats"]
    assert ls["matches"] is False and ls["mismatches"][0]["tier"] == "premium"
    behind = {"premium": {"requests": 1, "failures": 1}, "batch": {"requests": 1, "failures": 0}}
    assert rep.summarize(records, None, behind, "csv")["accounting"]["locust_stats"]["csv_lagging"] is True


def test_within_deadline_and_rates():
    # premium deadline 1000 ms: 3 of 4 answered in time, 1 refused -> 75% of answered, 60% goodput
    records = [rec("premium", latency=ms, t=1000 + i) for i, ms in enumerate([100.0, 200.0, 900.0, 1500.0])]
    records.append(rec("premium", 503, code="deadline_exceeded", t=1004))
    s = rep.summarize(records, {"sent": {"premium": 5}, "started_epoch": 1000.0})["tiers"]["premium"]
    assert s["within_deadline_pct"] == 75.0
    assert s["goodput_pct"] == 60.0
    # window: first send (1000) to last completion (1003 + 1.5 s)
    assert s["rps_answered"] == pytest.approx(4 / 4.5, abs=0.01)


def test_phases_use_the_planned_durations():
    records = [rec("standard", t=1000 + i * 0.1, phase="warmup") for i in range(20)]
    refused = [rec("standard", 429, code="queue_full", t=1010 + i / 20, phase="overload") for i in range(60)]
    records += refused
    records += [rec("standard", t=1010 + i * 0.05, phase="overload") for i in range(40)]
    meta = {
        "sent": {"standard": 120},
        "started_epoch": 1000.0,
        "phases": [
            {"phase": "warmup", "duration_s": 10, "users": 4},
            {"phase": "overload", "duration_s": 10, "users": 12},
        ],
    }
    s = rep.summarize(records, meta)
    assert list(s["phases"]) == ["warmup", "overload"]
    assert s["phases"]["warmup"]["standard"]["rps_answered"] == 2.0
    assert s["phases"]["overload"]["standard"]["rps_answered"] == 4.0
    assert s["phases"]["overload"]["standard"]["rejected"] == {"queue_full": 60}
    assert [p["start_s"] for p in s["phase_plan"]] == [0.0, 10.0]


def test_report_writes_summary_and_plot(tmp_path, capsys):
    records = [rec("premium", latency=5.0 + i, t=1000 + i * 0.1, phase="warmup") for i in range(30)]
    records += [rec("batch", 429, code="queue_full", t=1001 + i * 0.1, phase="overload") for i in range(5)]
    run = write_run(tmp_path, records, {"sent": {"premium": 30, "batch": 6}, "started_epoch": 1000.0})
    (run / "locust_stats.csv").write_text(
        "Type,Name,Request Count,Failure Count\nPOST,premium,30,0\nPOST,batch,5,5\n,Aggregated,35,5\n"
    )
    assert rep.main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "Accounting" in out and "NO" in out  # one batch request never came back
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tiers"]["batch"]["lost_in_flight"] == 1
    assert summary["accounting"]["locust_stats"] == {
        "source": "csv",
        "matches": True,
        "csv_lagging": False,
        "mismatches": [],
    }
    assert (run / "report.png").stat().st_size > 10_000
    assert rep.main([str(run / "requests.jsonl"), "--strict", "--no-plot"]) == 1
    assert rep.main([str(tmp_path / "missing")]) == 2


def test_a_line_cut_short_is_skipped(tmp_path, capsys):
    run = write_run(tmp_path, [rec("premium")])
    with open(run / "requests.jsonl", "a") as f:
        f.write('{"t": 1000, "tier": "prem')
    assert rep.summarize(rep.read_requests(run / "requests.jsonl"))["requests_logged"] == 1
    assert "not JSON" in capsys.readouterr().err


def test_report_does_not_import_locust():
    code = "import sys, loadtest.report; sys.exit('locust' in sys.modules or 'gevent' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


class _Stub(BaseHTTPRequestHandler):
    """Answers like the API: 200 with the router's headers, 429 queue_full every 4th request, 401."""

    count = 0
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with _Stub.lock:
            _Stub.count += 1
            n = _Stub.count
        key = self.headers.get("Authorization", "")
        if key == "Bearer bad-key":
            status, payload, headers = 401, {"error": {"code": "invalid_api_key"}}, {}
        elif n % 4 == 0:
            status, payload, headers = 429, {"error": {"code": "queue_full"}}, {"Retry-After": "1"}
        else:
            inp = body["input"]
            data = [{"object": "embedding", "index": i, "embedding": [0.0]} for i in range(len(inp))]
            status, payload = 200, {"object": "list", "data": data}
            headers = {"x-infergraph-tier": "x", "x-infergraph-queue-ms": "1.5"}
        raw = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in {**headers, "Content-Type": "application/json", "Content-Length": str(len(raw))}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


def test_locustfile_log_accounts_for_every_request(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cmd = [
            sys.executable, "-m", "locust", "-f", "loadtest/", "--headless", "--only-summary",
            "-H", f"http://127.0.0.1:{server.server_address[1]}", "-u", "4", "-r", "4", "-t", "3s",
            "--ig-premium-rps", "5", "--ig-standard-rps", "5", "--ig-batch-rps", "2",
            "--ig-batch-key", "bad-key", "--ig-batch-weight", "1",
            "--ig-log", str(tmp_path / "requests.jsonl"), "--json-file", str(tmp_path / "locust"),
        ]  # fmt: skip
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    assert proc.returncode == 1, proc.stderr[-3000:]  # Locust exits 1 when any request failed
    summary = rep.report(tmp_path, make_plot=False, quiet=True)
    tiers = summary["tiers"]
    assert set(tiers) == {"premium", "standard", "batch"}
    assert summary["accounting"]["balanced"] is True
    assert summary["accounting"]["locust_stats"]["matches"] is True
    assert tiers["batch"]["other_errors"] == {"401 invalid_api_key": tiers["batch"]["sent"]}
    assert tiers["standard"]["answered"] > 0 and tiers["standard"]["queue_ms"]["p50"] == 1.5
    rejected = sum(t["rejected"].get("queue_full", 0) for t in tiers.values())
    assert rejected > 0
    lines = [json.loads(x) for x in (tmp_path / "requests.jsonl").read_text().splitlines()]
    refused = next(x for x in lines if x["code"] == "queue_full")
    assert refused["status"] == 429 and refused["retry_after"] == 1.0
    assert {x["sentences"] for x in lines if x["tier"] == "batch"} <= set(range(16, 33))
    meta = json.loads((tmp_path / "requests.meta.json").read_text())
    assert sum(meta["sent"].values()) == len(lines) and meta["final"] is True
