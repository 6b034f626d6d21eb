"""`locust -f loadtest/` against the real service with every kind in the mix: ~15 s of a steady shape,
then the report (and its MLflow run, into a temporary store) of what it logged."""

import json
import subprocess
import sys

import pytest

from infergraph.paths import PROJECT_ROOT
from loadtest import report as rep

pytestmark = pytest.mark.integration

KINDS = ("embeddings", "rerank", "chat", "transcriptions")


def test_locust_drives_every_kind_of_the_real_service(service, tmp_path):
    cmd = [
        sys.executable, "-m", "locust", "-f", "loadtest/", "--headless", "--only-summary", "-H", service,
        "--ig-kinds", "embeddings:2,rerank:1,chat:1,transcriptions:1",
        "--ig-shape", "steady", "--ig-steady-s", "15", "--ig-base-users", "8",
        "--ig-premium-users", "2", "--ig-standard-users", "2",  # the other 4: batch, at 0.2 requests/s
        "--ig-timeout-s", "60", "--exit-code-on-error", "0",
        "--ig-log", str(tmp_path / "requests.jsonl"), "--json-file", str(tmp_path / "locust"),
        "--csv", str(tmp_path / "locust"), "--html", str(tmp_path / "locust.html"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]

    summary = rep.report(
        tmp_path, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path / "a"
    )
    lines = [json.loads(x) for x in (tmp_path / "requests.jsonl").read_text().splitlines()]
    # Overload refusals (503 deadline_exceeded with Retry-After) are honest answers on a busy CI box;
    # anything else from the server side is a defect.
    refusal = {"deadline_exceeded", "queue_full", "replica_unavailable"}
    server_errors = [
        x for x in lines if x["status"] >= 500 and not (x["code"] in refusal and x["retry_after"])
    ]
    assert not server_errors, server_errors[:5]
    assert not [x for x in lines if x["status"] == 0], "requests without an HTTP answer"
    kinds = summary["kinds"]
    assert set(kinds) == set(KINDS)
    for kind in KINDS:
        assert kinds[kind]["all"]["answered"] > 0, (kind, kinds[kind]["all"])
    assert summary["accounting"]["balanced"] is True, summary["accounting"]
    assert summary["accounting"]["locust_stats"]["matches"] is True
    chat = kinds["chat"]["all"]
    assert chat["ttft_ms"]["p50"] > 0 and chat["tokens_per_s"] > 0 and chat["output_tokens"] > 0
    assert kinds["transcriptions"]["all"]["audio_s_per_s"] > 0
    assert {x["served_tier"] for x in lines if x["status"] == 200} <= {"premium", "standard", "batch"}
    # the service metered the run: cost per 1,000 requests per demo tenant
    assert "demo-batch" in summary["cost"]["tenants"], summary["cost"]
    assert summary["mlflow_run_id"]
