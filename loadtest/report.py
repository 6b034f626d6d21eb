"""Per-tier and per-kind report of a Locust run of loadtest/locustfile.py, from its request log (`--ig-log`).

    uv run python -m loadtest.report results/loadtest/<run>            # a run dir
    uv run python -m loadtest.report results/loadtest/<run>/requests.jsonl
    uv run python -m loadtest.report results/loadtest/<run> --mlflow   # and log it as an MLflow run

Reads `requests.jsonl` (one line per completed request), `requests.meta.json` (requests sent per
tier and kind, phases, `/admin/usage` before and after) and Locust's `--json-file`/`--csv` stats when
present; prints per-tier, per-kind and per-phase tables, the cost per 1,000 requests and the
accounting line, writes `summary.json`, `report.png` (over time, per tier) and `kinds.png` (per kind
and tier: latency, SLO attainment, refusals, chat tokens/s, speech audio s/s) next to the log.

SLO attainment: the share of requests sent that were answered within the tier's deadline (the
latency of the whole answer; for chat, the time to its first token, which is what the deadline
applies to).

Accounting: every request sent is answered (200), refused with an explicit HTTP error (429/503
with an error code, or another 4xx/5xx; a chat stream that broke off counts as `200 <code>`), or
unaccounted: no HTTP answer (connection error, client timeout) or still in flight when Locust
stopped (sent per the meta file, never logged). The run balances when answered + HTTP errors = sent.

Imports neither locust (it would monkey-patch this process) nor anything heavy at module level:
Locust imports this file too when given `-f loadtest/`. MLflow is imported only by `--mlflow`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

TIER_ORDER = ("premium", "standard", "batch")
KIND_ORDER = ("embeddings", "rerank", "chat", "transcriptions")
PHASE_ORDER = ("constant", "steady", "warmup", "spike", "overload", "recover")
REJECT_STATUSES = (429, 503)
LOG_NAME = "requests.jsonl"
EXPERIMENT = "loadtest"
DEFAULT_TRACKING_URI = "sqlite:///mlflow/mlflow.db"  # the project's store, beside the optimize runs
DEFAULT_ARTIFACT_ROOT = "mlflow/artifacts"


def request_name(r: dict[str, Any]) -> str:
    """The name Locust's stats use: "<kind> <tier>" (logs from before kinds: the tier)."""
    return f"{r['kind']} {r['tier']}" if r.get("kind") else str(r["tier"])


def is_answered(r: dict[str, Any]) -> bool:
    """A 200 with nothing wrong (a chat stream that broke off carries a code)."""
    return r["status"] == 200 and not r.get("code")


def judged_ms(r: dict[str, Any]) -> float:
    """What the tier's deadline is judged on: time to first token for chat, else the whole answer."""
    if r.get("kind") == "chat" and r.get("ttft_ms") is not None:
        return float(r["ttft_ms"])
    return float(r["latency_ms"])


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (as numpy.percentile by default); NaN for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _order(names: Iterable[str], preferred: Sequence[str]) -> list[str]:
    names = set(names)
    return [n for n in preferred if n in names] + sorted(names - set(preferred))


def read_requests(path: Path) -> list[dict[str, Any]]:
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:  # a line cut short by a killed run: report, keep going
                print(f"warning: {path}:{lineno}: not JSON ({exc}); skipped", file=sys.stderr)
    return records


def read_locust_stats(path: Path) -> dict[str, dict[str, int]]:
    """Request and failure counts per request name, from Locust's `--json-file` output (final
    counts) or its `--csv` `<prefix>_stats.csv` (rewritten once a second while the test runs)."""
    out: dict[str, dict[str, int]] = {}
    if path.suffix == ".json":
        for e in json.loads(path.read_text()):
            entry = out.setdefault(e["name"], {"requests": 0, "failures": 0})
            entry["requests"] += int(e["num_requests"])
            entry["failures"] += int(e["num_failures"])
        return out
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("Name") in (None, "", "Aggregated"):
                continue
            entry = out.setdefault(row["Name"], {"requests": 0, "failures": 0})
            entry["requests"] += int(row["Request Count"])
            entry["failures"] += int(row["Failure Count"])
    return out


def _latency_stats(values: Sequence[float]) -> dict[str, float | None]:
    def r(x: float) -> float | None:
        return None if math.isnan(x) else round(x, 2)

    return {
        "p50": r(percentile(values, 50)),
        "p95": r(percentile(values, 95)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values)) if values else None,
        "mean": r(sum(values) / len(values)) if values else None,
    }


def _rate(total: float, seconds: float, digits: int = 2) -> float | None:
    return round(total / seconds, digits) if seconds > 0 else None


def _group_stats(records: Sequence[dict[str, Any]], sent: int, seconds: float) -> dict[str, Any]:
    """Counts and latencies of one group of requests (a tier, a kind of a tier, a phase, or all)."""
    answered = [r for r in records if is_answered(r)]
    rejected: Counter[str] = Counter()
    other: Counter[str] = Counter()
    transport = 0
    for r in records:
        status = r["status"]
        if is_answered(r):
            continue
        if not status:
            transport += 1
        elif status in REJECT_STATUSES:
            rejected[r.get("code") or f"{status}_no_code"] += 1
        else:
            other[f"{status} {r.get('code') or 'no_code'}"] += 1
    http_errors = sum(rejected.values()) + sum(other.values())
    lost = sent - len(records)
    latencies = [float(r["latency_ms"]) for r in answered]
    queue = [float(r["queue_ms"]) for r in answered if r.get("queue_ms") is not None]
    in_deadline = sum(1 for r in answered if r.get("deadline_ms") and judged_ms(r) <= r["deadline_ms"])
    retry_after = [float(r["retry_after"]) for r in records if r.get("retry_after") is not None]
    # chat: time to first token and output tokens; speech: audio seconds
    ttft = [float(r["ttft_ms"]) for r in answered if r.get("ttft_ms") is not None]
    tokens = [int(r["output_tokens"]) for r in answered if r.get("output_tokens") is not None]
    decode = [float(r["tokens_per_s"]) for r in answered if r.get("tokens_per_s") is not None]
    audio = [float(r["audio_s"]) for r in answered if r.get("audio_s") is not None]
    rtf = [float(r["latency_ms"]) / 1000 / float(r["audio_s"]) for r in answered if r.get("audio_s")]
    return {
        "sent": sent,
        "completed": len(records),
        "answered": len(answered),
        "rejected": dict(rejected.most_common()),
        "rejected_total": sum(rejected.values()),
        "other_errors": dict(other.most_common()),
        "http_errors": http_errors,
        "server_errors": sum(
            1 for r in records if int(r["status"]) >= 500 and r["status"] not in REJECT_STATUSES
        ),
        "transport_errors": transport,
        "lost_in_flight": max(0, lost),
        "unaccounted": transport + max(0, lost),
        "over_logged": max(0, -lost),  # more log lines than requests sent: the meta file is wrong
        "latency_ms": _latency_stats(latencies),
        "queue_ms": _latency_stats(queue),
        "retry_after_s": _latency_stats(retry_after),
        "seconds": round(seconds, 3),
        "rps_answered": _rate(len(answered), seconds),
        "sentences_per_s": _rate(sum(r.get("sentences") or 0 for r in answered), seconds, 1),
        "within_deadline_pct": round(100 * in_deadline / len(answered), 2) if answered else None,
        "goodput_pct": round(100 * in_deadline / sent, 2) if sent else None,
        "slo_attainment_pct": round(100 * in_deadline / sent, 2) if sent else None,
        "ttft_ms": _latency_stats(ttft),
        "output_tokens": sum(tokens) if tokens else None,
        "tokens_per_s": _rate(sum(tokens), seconds, 1) if tokens else None,
        "decode_tokens_per_s": _latency_stats(decode),
        "audio_s": round(sum(audio), 2) if audio else None,
        "audio_s_per_s": _rate(sum(audio), seconds) if audio else None,
        "real_time_factor": _latency_stats(rtf) if rtf else None,
    }


def summarize(
    records: Sequence[dict[str, Any]],
    meta: dict[str, Any] | None = None,
    locust_stats: dict[str, dict[str, int]] | None = None,
    locust_stats_source: str = "json",
) -> dict[str, Any]:
    """Everything the tables, plot and summary.json show. `meta["sent"]` gives requests sent per tier
    (without it, sent = logged and requests lost in flight can not be seen)."""
    meta = meta or {}
    by_tier: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_tier[r["tier"]].append(r)
    sent_meta: dict[str, int] = dict(meta.get("sent") or {})
    tiers = _order(set(by_tier) | set(sent_meta), TIER_ORDER)
    sent = {t: int(sent_meta.get(t, len(by_tier[t]))) if sent_meta else len(by_tier[t]) for t in tiers}

    if records:
        start = min(float(r["t"]) for r in records)
        end = max(float(r["t"]) + float(r["latency_ms"]) / 1000 for r in records)
    else:
        start = end = 0.0
    start = float(meta.get("started_epoch") or start)
    seconds = max(end - start, 0.0)

    summary_tiers = {t: _group_stats(by_tier[t], sent[t], seconds) for t in tiers}
    total = _group_stats(records, sum(sent.values()), seconds)

    # Per kind and tier ("<kind> <tier>", as Locust names the requests): sent from the meta file's
    # per-name counts when it has them. Logs from before kinds are all embeddings.
    by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_name[f"{r.get('kind') or 'embeddings'} {r['tier']}"].append(r)
    sent_names: dict[str, int] = dict(meta.get("sent_by_name") or {})
    kinds: dict[str, dict[str, Any]] = {}
    names = set(by_name) | set(sent_names)
    for kind in _order({n.split(" ", 1)[0] for n in names}, KIND_ORDER):
        kind_tiers = _order({n.split(" ", 1)[1] for n in names if n.split(" ", 1)[0] == kind}, TIER_ORDER)
        kinds[kind] = {}
        for t in kind_tiers:
            rs = by_name[f"{kind} {t}"]
            kinds[kind][t] = _group_stats(rs, int(sent_names.get(f"{kind} {t}", len(rs))), seconds)
        all_rs = [r for t in kind_tiers for r in by_name[f"{kind} {t}"]]
        kinds[kind]["all"] = _group_stats(all_rs, sum(s["sent"] for s in kinds[kind].values()), seconds)

    # Phases: durations from the shape's plan when known, else the span of the phase's sends.
    planned = {p["phase"]: float(p["duration_s"]) for p in meta.get("phases") or []}
    by_phase: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_phase[r.get("phase") or "constant"].append(r)
    phases: dict[str, Any] = {}
    plan_order = [p["phase"] for p in meta.get("phases") or []]
    for phase in _order(by_phase, [*plan_order, *PHASE_ORDER]):
        rs = by_phase[phase]
        span = max(float(r["t"]) for r in rs) - min(float(r["t"]) for r in rs)
        secs = planned[phase] if phase in planned else seconds if len(by_phase) == 1 else span
        phase_tiers: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rs:
            phase_tiers[r["tier"]].append(r)
        # sent per phase is not known (the meta file counts per tier), so completed stands in for it
        phases[phase] = {
            t: _group_stats(phase_tiers[t], len(phase_tiers[t]), secs) for t in tiers if t in phase_tiers
        }

    groups = [s for k in kinds.values() for t, s in k.items() if t != "all"] if sent_names else []
    balanced = all(
        s["http_errors"] + s["answered"] == s["sent"] and not s["over_logged"]
        for s in [*summary_tiers.values(), *groups]
    )
    accounting: dict[str, Any] = {
        "sent": total["sent"],
        "answered": total["answered"],
        "http_errors": total["http_errors"],
        "transport_errors": total["transport_errors"],
        "lost_in_flight": total["lost_in_flight"],
        "over_logged": total["over_logged"],
        "balanced": balanced,
        "sent_from": "meta" if sent_meta else "log (no meta file: requests lost in flight are invisible)",
        # of those lost in flight, how many were still waiting for an answer when Locust exited
        "abandoned_at_exit": sum((meta.get("abandoned_in_flight") or {}).values()),
    }
    if locust_stats is not None:
        mismatches: list[dict[str, Any]] = []
        logged: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in records:
            logged[request_name(r)].append(r)
        for name in sorted(set(logged) | set(locust_stats)):
            ls = locust_stats.get(name, {"requests": 0, "failures": 0})
            rs = logged[name]
            mine = {"requests": len(rs), "failures": sum(1 for r in rs if not is_answered(r))}
            if ls != mine:
                mismatches.append({"tier": name, "locust": ls, "log": mine})
        # the CSV is rewritten once a second: requests that end in the last second can be missing
        lagging = (
            bool(mismatches)
            and locust_stats_source == "csv"
            and all(m["locust"]["requests"] <= m["log"]["requests"] for m in mismatches)
        )
        accounting["locust_stats"] = {
            "source": locust_stats_source,
            "matches": not mismatches,
            "csv_lagging": lagging,
            "mismatches": mismatches,
        }

    plan, offset = [], 0.0
    for p in meta.get("phases") or []:
        plan.append({**p, "start_s": offset, "end_s": offset + float(p["duration_s"])})
        offset += float(p["duration_s"])

    return {
        "requests_logged": len(records),
        "started_epoch": start,
        "seconds": round(seconds, 3),
        "shape": meta.get("shape"),
        "host": meta.get("host"),
        "tiers": summary_tiers,
        "kinds": kinds,
        "total": total,
        "cost": cost_report(meta, summary_tiers),
        "phases": phases,
        "phase_plan": plan,
        "deadline_ms": meta.get("deadline_ms") or {},
        "accounting": accounting,
    }


def cost_report(meta: dict[str, Any], tiers: dict[str, Any]) -> dict[str, Any] | None:
    """Cost per 1,000 requests per tenant over the run, from `GET /admin/usage` before and after
    (the service meters each answered request's share of its batch's compute seconds and prices
    them at `price_per_replica_hour`; LLM streams are not metered there). None without both."""
    before, after = meta.get("usage_before"), meta.get("usage_after")
    if not before or not after or "error" in before or "error" in after:
        errors = [u["error"] for u in (before, after) if u and "error" in u]
        return {"error": errors[0]} if errors else None
    price = float(after.get("price_per_replica_hour") or 0.0)
    tenants: dict[str, Any] = {}
    for name, now in sorted(after["tenants"].items()):
        then = before["tenants"].get(name, {})
        delta = {k: now.get(k, 0) - then.get(k, 0) for k in ("requests", "answered", "rejected", "compute_s")}
        if not delta["requests"]:
            continue  # a tenant this run did not use
        cost = float(delta["compute_s"]) / 3600 * price
        tenants[name] = {
            **delta,
            "compute_s": round(float(delta["compute_s"]), 4),
            "cost": round(cost, 8),
            "cost_per_1k_requests": round(1000 * cost / delta["answered"], 6) if delta["answered"] else None,
        }
    answered = sum(t["answered"] for t in tenants.values())
    cost = sum(t["cost"] for t in tenants.values())
    return {
        "price_per_replica_hour": price,
        "tenants": tenants,
        "cost": round(cost, 8),
        "answered": answered,
        "cost_per_1k_requests": round(1000 * cost / answered, 6) if answered else None,
        "answered_in_log": sum(t["answered"] for t in tiers.values()),
    }


def _fmt(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _codes(counts: dict[str, int]) -> str:
    return "\n".join(f"{k} {v:,}" for k, v in counts.items()) or "0"


def print_report(summary: dict[str, Any], title: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(140, Console().width))
    table = Table(title=f"Per tier{f' - {title}' if title else ''} ({summary['seconds']:.0f} s)")
    for col in ("tier", "sent", "answered", "rejected (by code)", "other errors", "unacc."):
        left = col in ("tier", "rejected (by code)", "other errors")
        table.add_column(col, justify="left" if left else "right", no_wrap=left)
    for col in ("p50 ms", "p95 ms", "p99 ms", "ans./s", "in deadline %", "goodput %"):
        table.add_column(col, justify="right")
    rows = [*summary["tiers"].items(), ("all", summary["total"])]
    for i, (tier, s) in enumerate(rows):
        lat = s["latency_ms"]
        table.add_row(
            tier,
            f"{s['sent']:,}",
            f"{s['answered']:,}",
            _codes(s["rejected"]),
            _codes(s["other_errors"]),
            f"{s['unaccounted']:,}",
            _fmt(lat["p50"]),
            _fmt(lat["p95"]),
            _fmt(lat["p99"]),
            _fmt(s["rps_answered"], 1),
            _fmt(s["within_deadline_pct"], 1),
            _fmt(s["goodput_pct"], 1),
            end_section=i == len(rows) - 2,
        )
    console.print(table)
    if summary.get("kinds") and set(summary["kinds"]) != {"embeddings"}:
        console.print(kind_table(summary["kinds"]))
    cost = summary.get("cost")
    if cost and "error" not in cost:
        console.print(cost_table(cost))
    elif cost:
        console.print(f"Cost: GET /admin/usage failed ({cost['error']})")

    if len(summary["phases"]) > 1:
        pt = Table(title="Per phase (sent = completed; durations from the shape)")
        for col in ("phase", "tier", "completed", "answered", "rejected", "other", "no answer"):
            left = col in ("phase", "tier", "rejected")
            pt.add_column(col, justify="left" if left else "right", no_wrap=left)
        for col in ("p50 ms", "p95 ms", "queue p95 ms", "ans./s", "in deadline %"):
            pt.add_column(col, justify="right")
        for phase, tiers in summary["phases"].items():
            for j, (tier, s) in enumerate(tiers.items()):
                pt.add_row(
                    phase if j == 0 else "",
                    tier,
                    f"{s['completed']:,}",
                    f"{s['answered']:,}",
                    _codes(s["rejected"]),
                    f"{sum(s['other_errors'].values()):,}",
                    f"{s['transport_errors']:,}",
                    _fmt(s["latency_ms"]["p50"]),
                    _fmt(s["latency_ms"]["p95"]),
                    _fmt(s["queue_ms"]["p95"]),
                    _fmt(s["rps_answered"], 1),
                    _fmt(s["within_deadline_pct"], 1),
                    end_section=j == len(tiers) - 1,
                )
        console.print(pt)

    a = summary["accounting"]
    verdict = "[green]yes[/green]" if a["balanced"] else "[red]NO[/red]"
    over = f", {a['over_logged']:,} more logged than sent" if a["over_logged"] else ""
    if a["abandoned_at_exit"]:
        over += f" ({a['abandoned_at_exit']:,} still unanswered when Locust exited)"
    console.print(
        f"Accounting: answered {a['answered']:,} + HTTP errors {a['http_errors']:,}"
        f" = sent {a['sent']:,}: {verdict}  (unaccounted: {a['transport_errors']:,} without HTTP answer,"
        f" {a['lost_in_flight']:,} lost in flight{over}; sent counted from {a['sent_from']})"
    )
    if "locust_stats" in a:
        ls = a["locust_stats"]
        src = "--json-file" if ls["source"] == "json" else "--csv"
        if ls["matches"]:
            console.print(
                f"Locust's own stats ({src}) agree with the log (requests and failures per tier): yes"
            )
        elif ls["csv_lagging"]:
            console.print(
                f"Locust's {src} stats count fewer requests than the log (the CSV is rewritten once a second;"
                f" --json-file holds the final counts): {ls['mismatches']}"
            )
        else:
            console.print(f"Locust's own stats ({src}) agree with the log: [red]NO[/red] {ls['mismatches']}")


KIND_UNITS = {  # the throughput column of each kind: (unit, summary key, digits)
    "embeddings": ("texts/s", "sentences_per_s", 1),
    "rerank": ("docs/s", "sentences_per_s", 1),
    "chat": ("tok/s", "tokens_per_s", 1),
    "transcriptions": ("audio s/s", "audio_s_per_s", 2),
}


def kind_table(kinds: dict[str, dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="Per kind and tier (SLO: answered within the tier's deadline; chat: its first token)")
    for col in ("kind", "tier", "sent", "ans.", "refused, errors (by code)", "unacc."):
        left = col in ("kind", "tier", "refused, errors (by code)")
        table.add_column(col, justify="left" if left else "right", no_wrap=left)
    for col in ("p50 ms", "p99 ms", "TTFT p50/p99", "throughput", "SLO %"):
        table.add_column(col, justify="right", no_wrap=True)
    for i, (kind, tiers) in enumerate(kinds.items()):
        unit, key, digits = KIND_UNITS.get(kind, ("units/s", "sentences_per_s", 1))
        rows = [(t, s) for t, s in tiers.items() if t != "all" or len(tiers) > 2]  # "all" of one tier: no
        for j, (tier, s) in enumerate(rows):
            ttft = s["ttft_ms"]
            table.add_row(
                kind if j == 0 else "",
                tier,
                f"{s['sent']:,}",
                f"{s['answered']:,}",
                _codes({**s["rejected"], **s["other_errors"]}),
                f"{s['unaccounted']:,}",
                _fmt(s["latency_ms"]["p50"]),
                _fmt(s["latency_ms"]["p99"]),
                f"{_fmt(ttft['p50'])}/{_fmt(ttft['p99'])}" if ttft["p50"] is not None else "",
                f"{_fmt(s.get(key), digits)} {unit}",
                _fmt(s["slo_attainment_pct"], 1),
                end_section=j == len(rows) - 1 and i < len(kinds) - 1,
            )
    return table


def cost_table(cost: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(
        title="Cost per tenant over the run"
        f" (GET /admin/usage; {cost['price_per_replica_hour']} per replica-hour)"
    )
    for col in ("tenant", "requests", "answered", "rejected", "compute s", "cost", "per 1,000 answered"):
        table.add_column(col, justify="left" if col == "tenant" else "right")
    rows = [
        *cost["tenants"].items(),
        ("all", {**cost, "requests": None, "rejected": None, "compute_s": None}),
    ]
    for i, (tenant, t) in enumerate(rows):
        table.add_row(
            tenant,
            _fmt(t["requests"]),
            _fmt(t["answered"]),
            _fmt(t["rejected"]),
            _fmt(t["compute_s"], 2),
            _fmt(t["cost"], 6),
            _fmt(t["cost_per_1k_requests"], 6),
            end_section=i == len(rows) - 2,
        )
    return table


def plot(records: Sequence[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    """Latency over time, throughput over time (answered solid, rejected dashed), percentile bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = float(summary["started_epoch"])
    tiers = list(summary["tiers"])
    colors = {t: f"C{i}" for i, t in enumerate(tiers)}
    fig, (ax_lat, ax_tp, ax_bar) = plt.subplots(
        3, 1, figsize=(11, 11), gridspec_kw={"height_ratios": [3, 2, 2]}
    )
    ax_tp.sharex(ax_lat)

    seconds = max(float(summary["seconds"]), 1.0)
    bin_s = max(1.0, round(seconds / 60))
    nbins = int(math.ceil(seconds / bin_s)) + 1
    for tier in tiers:
        rs = [r for r in records if r["tier"] == tier]
        ok = [r for r in rs if r["status"] == 200]
        bad = [r for r in rs if r["status"] != 200]
        ax_lat.scatter(
            [r["t"] - start for r in ok], [r["latency_ms"] for r in ok], s=3, alpha=0.3, color=colors[tier]
        )
        ax_lat.scatter(
            [r["t"] - start for r in bad],
            [max(r["latency_ms"], 0.1) for r in bad],
            s=8,
            marker="x",
            alpha=0.5,
            color=colors[tier],
        )
        # p95 of answered per time bin (by send time)
        bins: dict[int, list[float]] = defaultdict(list)
        for r in ok:
            bins[int((r["t"] - start) // bin_s)].append(r["latency_ms"])
        xs = sorted(bins)
        ax_lat.plot(
            [(b + 0.5) * bin_s for b in xs],
            [percentile(bins[b], 95) for b in xs],
            color=colors[tier],
            label=f"{tier} p95 (x: refused)",
        )
        # throughput by completion time
        answered = [0] * nbins
        refused = [0] * nbins
        for r in rs:
            b = min(nbins - 1, max(0, int((r["t"] + r["latency_ms"] / 1000 - start) // bin_s)))
            if r["status"] == 200:
                answered[b] += 1
            else:
                refused[b] += 1
        centers = [(b + 0.5) * bin_s for b in range(nbins)]
        ax_tp.plot(centers, [n / bin_s for n in answered], color=colors[tier], label=f"{tier} answered")
        if any(refused):
            ax_tp.plot(
                centers, [n / bin_s for n in refused], color=colors[tier], ls="--", label=f"{tier} refused"
            )

    # phase boundaries (planned durations from the shape when known)
    edges = _phase_edges(records, summary, start)
    for ax in (ax_lat, ax_tp):
        for name, x0, x1 in edges:
            ax.axvline(x0, color="grey", lw=0.8, ls=":")
            ax.text(
                (x0 + x1) / 2,
                1.0,
                name,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    for tier, deadline in summary.get("deadline_ms", {}).items():
        if tier in colors:
            ax_lat.axhline(deadline, color=colors[tier], lw=0.8, ls="--", alpha=0.6)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency ms (log; dashed: tier deadline)")
    ax_lat.legend(loc="upper left", fontsize=8)
    ax_tp.set_ylabel(f"requests/s ({bin_s:.0f} s bins)")
    ax_tp.set_xlabel("seconds since start")
    ax_tp.legend(loc="upper left", fontsize=8, ncol=2)

    width = 0.25
    for i, p in enumerate(("p50", "p95", "p99")):
        vals = [summary["tiers"][t]["latency_ms"][p] or 0 for t in tiers]
        ax_bar.bar([x + (i - 1) * width for x in range(len(tiers))], vals, width, label=p)
    for x, t in enumerate(tiers):
        if not summary["tiers"][t]["answered"]:
            ax_bar.text(x, 0.5, "none answered", transform=ax_bar.get_xaxis_transform(), ha="center")
    ax_bar.set_xticks(range(len(tiers)), tiers)
    ax_bar.set_yscale("log")
    ax_bar.set_ylabel("answered latency ms (log)")
    ax_bar.legend(fontsize=8)
    fig.suptitle(
        f"{summary.get('shape') or ''} run: {summary['requests_logged']:,} requests, {seconds:.0f} s"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_kinds(summary: dict[str, Any], path: Path) -> None:
    """Per kind and tier: latency p50/p99 against the deadline (chat: time to first token), SLO
    attainment, refusals by code, and chat tokens/s and speech audio s/s per tier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(k, t, s) for k, tiers in summary["kinds"].items() for t, s in tiers.items() if t != "all"]
    short = {"embeddings": "embed", "transcriptions": "speech"}
    labels = [f"{short.get(k, k)}\n{t}" for k, t, _s in groups]
    xs = list(range(len(groups)))
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    (ax_lat, ax_slo), (ax_ref, ax_tp) = axes

    width = 0.38
    for i, p in enumerate(("p50", "p99")):
        vals = [(s["ttft_ms"] if k == "chat" else s["latency_ms"])[p] or 0 for k, _t, s in groups]
        ax_lat.bar([x + (i - 0.5) * width for x in xs], vals, width, label=p)
    for x, (_k, _t, s) in zip(xs, groups, strict=True):
        deadline = summary.get("deadline_ms", {}).get(_t)
        if deadline:
            ax_lat.hlines(deadline, x - 0.45, x + 0.45, color="red", lw=1.2)
        if not s["answered"]:
            ax_lat.text(
                x, 0.5, "none\nanswered", transform=ax_lat.get_xaxis_transform(), ha="center", fontsize=7
            )
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("answered ms (log; chat: first token; red: deadline)")
    ax_lat.legend(fontsize=8, loc="upper left")

    slo = [s["slo_attainment_pct"] or 0 for _k, _t, s in groups]
    ax_slo.bar(xs, slo, color=["C2" if v >= 99 else "C1" if v >= 90 else "C3" for v in slo])
    for x, v in zip(xs, slo, strict=True):
        ax_slo.text(x, v + 1, f"{v:.1f}", ha="center", fontsize=8)
    ax_slo.set_ylim(0, 110)
    ax_slo.set_ylabel("SLO attainment % (answered in deadline / sent)")

    codes = sorted({c for _k, _t, s in groups for c in [*s["rejected"], *s["other_errors"]]})
    bottom = [0.0] * len(groups)
    for j, code in enumerate(codes):
        vals = [float(s["rejected"].get(code, 0) + s["other_errors"].get(code, 0)) for _k, _t, s in groups]
        ax_ref.bar(xs, vals, bottom=bottom, label=code, color=f"C{j % 10}")
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    unacc = [float(s["unaccounted"]) for _k, _t, s in groups]
    if any(unacc):
        ax_ref.bar(xs, unacc, bottom=bottom, label="no answer / lost", color="black")
    ax_ref.set_ylabel("refused and failed requests")
    if codes or any(unacc):
        ax_ref.legend(fontsize=7)
    else:
        ax_ref.text(0.5, 0.5, "none refused", transform=ax_ref.transAxes, ha="center")

    tiers = [t for t in summary["tiers"]]
    chat = summary["kinds"].get("chat", {})
    speech = summary["kinds"].get("transcriptions", {})
    tx = list(range(len(tiers)))
    ax_tp.bar([x - 0.2 for x in tx], [(chat.get(t) or {}).get("tokens_per_s") or 0 for t in tiers], 0.4,
              color="C0", label="chat output tokens/s")  # fmt: skip
    ax_tp.set_ylabel("chat output tokens/s", color="C0")
    ax_audio = ax_tp.twinx()
    ax_audio.bar([x + 0.2 for x in tx], [(speech.get(t) or {}).get("audio_s_per_s") or 0 for t in tiers], 0.4,
                 color="C1", label="speech audio s/s")  # fmt: skip
    ax_audio.set_ylabel("speech audio s per s", color="C1")
    ax_tp.set_xticks(tx, tiers)
    ax_tp.set_title("answered throughput per tier", fontsize=9)

    for ax in (ax_lat, ax_slo, ax_ref):
        ax.set_xticks(xs, labels, fontsize=8 if len(xs) < 8 else 7)
        ax.set_xlim(-0.6, len(xs) - 0.4)
    fig.suptitle(f"{summary.get('shape') or ''} run per kind and tier: {summary['seconds']:.0f} s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


ARTIFACT_PATTERNS = (
    "summary.json", "report.png", "kinds.png", "requests.meta.json", "requests.jsonl", "command.txt",
    "locust*.csv", "locust.html", "locust.json", "locust.log",
)  # fmt: skip


def mlflow_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """`<kind>/<tier>/<what>` per kind and tier (tier "all": the kind over every tier),
    `tier/<tier>/<what>` per tier, `all/<what>` and `cost/...`: p50/p99, SLO attainment and more."""
    metrics: dict[str, float] = {}

    def add(prefix: str, s: dict[str, Any]) -> None:
        values = {
            "sent": s["sent"],
            "answered": s["answered"],
            "refused": s["rejected_total"],
            "http_errors": s["http_errors"],
            "unaccounted": s["unaccounted"],
            "p50_ms": s["latency_ms"]["p50"],
            "p95_ms": s["latency_ms"]["p95"],
            "p99_ms": s["latency_ms"]["p99"],
            "slo_attainment_pct": s["slo_attainment_pct"],
            "answered_per_s": s["rps_answered"],
            "ttft_p50_ms": s["ttft_ms"]["p50"],
            "ttft_p99_ms": s["ttft_ms"]["p99"],
            "tokens_per_s": s["tokens_per_s"],
            "decode_tokens_per_s_p50": s["decode_tokens_per_s"]["p50"],
            "audio_s_per_s": s["audio_s_per_s"],
        }
        for key, value in values.items():
            if value is not None:
                metrics[f"{prefix}/{key}"] = float(value)

    for kind, tiers in summary.get("kinds", {}).items():
        for tier, s in tiers.items():
            add(f"{kind}/{tier}", s)
    for tier, s in summary["tiers"].items():
        add(f"tier/{tier}", s)
    add("all", summary["total"])
    cost = summary.get("cost") or {}
    if cost.get("cost_per_1k_requests") is not None:
        metrics["cost/per_1k_requests"] = float(cost["cost_per_1k_requests"])
        metrics["cost/total"] = float(cost["cost"])
    for tenant, t in (cost.get("tenants") or {}).items():
        if t["cost_per_1k_requests"] is not None:
            metrics[f"cost/{tenant}/per_1k_requests"] = float(t["cost_per_1k_requests"])
    metrics["accounting/balanced"] = float(summary["accounting"]["balanced"])
    return metrics


def log_to_mlflow(
    summary: dict[str, Any],
    out: Path,
    tracking_uri: str = DEFAULT_TRACKING_URI,
    artifact_root: str | Path = DEFAULT_ARTIFACT_ROOT,
    run_name: str | None = None,
    experiment_name: str = EXPERIMENT,
    extra_params: dict[str, Any] | None = None,
) -> str:
    """One run in the `loadtest` experiment (or `experiment_name`): params = the locustfile's options
    and `extra_params`, metrics = per kind and tier p50/p99/attainment (see mlflow_metrics),
    artifacts = the report's and Locust's files."""
    import mlflow

    from infergraph.optimize import tracking
    from infergraph.paths import absolute_tracking_uri, project_path

    uri = absolute_tracking_uri(tracking_uri)
    root = project_path(artifact_root)
    client = tracking.connect(uri, root)
    experiment = tracking.named_experiment(client, experiment_name, root / experiment_name)
    meta = summary.get("meta") or {}
    options = meta.get("options") or {}
    params: dict[str, Any] = {f"ig.{k.removeprefix('ig_')}": v for k, v in options.items()}
    params |= {
        "shape": summary.get("shape"),
        "host": summary.get("host"),
        "locust": meta.get("locust_version"),
    }
    params |= {
        f"kinds.{tier}": ",".join(f"{k}:{w:g}" for k, w in mix.items())
        for tier, mix in (meta.get("kinds") or {}).items()
    }
    params |= extra_params or {}
    name = run_name or f"{summary.get('shape') or 'none'} {options.get('ig_kinds', 'embeddings')} {out.name}"
    with mlflow.start_run(experiment_id=experiment, run_name=name) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items() if v is not None})
        mlflow.log_metrics(mlflow_metrics(summary))
        mlflow.set_tags(
            {
                "shape": str(summary.get("shape")),
                "balanced": str(summary["accounting"]["balanced"]),
                "run_dir": str(out.resolve()),
                "kinds": ",".join(summary.get("kinds") or {}),
            }
        )
        files = sorted({f for pattern in ARTIFACT_PATTERNS for f in out.glob(pattern) if f.is_file()})
        for f in files:
            mlflow.log_artifact(str(f))
        return str(run.info.run_id)


def _phase_edges(
    records: Sequence[dict[str, Any]], summary: dict[str, Any], start: float
) -> list[tuple[str, float, float]]:
    """(phase, start s, end s): the shape's plan when known, else the span of each phase's sends."""
    if summary.get("phase_plan"):
        return [(p["phase"], p["start_s"], p["end_s"]) for p in summary["phase_plan"]]
    edges = []
    for p in summary["phases"]:
        if p == "constant":
            continue
        ts = [r["t"] - start for r in records if r.get("phase") == p]
        edges.append((p, min(ts), max(ts)))
    return edges


def find_inputs(target: Path) -> tuple[Path, Path | None, Path | None, Path]:
    """(request log, meta file, Locust stats file, output dir) for a run dir or a log file.
    Locust's stats: `locust.json` (`--json-file <dir>/locust`), else a single `*_stats.csv`."""
    if target.is_dir():
        log = target / LOG_NAME
        if not log.exists():
            logs = sorted(target.glob("*.jsonl"))
            if len(logs) != 1:
                raise FileNotFoundError(f"no {LOG_NAME} (or a single *.jsonl) in {target}")
            log = logs[0]
    else:
        log = target
    if not log.exists():
        raise FileNotFoundError(log)
    out = log.parent
    meta = log.with_suffix(".meta.json")
    stats = [out / "locust.json"] if (out / "locust.json").exists() else sorted(out.glob("*_stats.csv"))
    return log, meta if meta.exists() else None, stats[0] if len(stats) == 1 else None, out


def report(
    target: Path,
    make_plot: bool = True,
    quiet: bool = False,
    tracking_uri: str | None = None,
    artifact_root: str | Path = DEFAULT_ARTIFACT_ROOT,
    run_name: str | None = None,
    experiment_name: str = EXPERIMENT,
    extra_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Summarize a run; writes summary.json (and report.png, kinds.png) next to the log and, with a
    `tracking_uri`, logs it as an MLflow run (its id in summary["mlflow_run_id"]). Returns the summary."""
    log, meta_path, stats_path, out = find_inputs(target)
    records = read_requests(log)
    meta = json.loads(meta_path.read_text()) if meta_path else None
    locust_stats = read_locust_stats(stats_path) if stats_path else None
    source = "json" if stats_path is not None and stats_path.suffix == ".json" else "csv"
    summary = summarize(records, meta, locust_stats, source)
    summary["inputs"] = {"log": str(log), "meta": str(meta_path or ""), "locust_stats": str(stats_path or "")}
    summary["meta"] = {k: (meta or {}).get(k) for k in ("options", "kinds", "locust_version")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    written = [out / "summary.json"]
    if make_plot and records:
        plot(records, summary, out / "report.png")
        plot_kinds(summary, out / "kinds.png")
        written += [out / "report.png", out / "kinds.png"]
    if not quiet:
        print_report(summary, title=str(out))
        print("wrote " + ", ".join(str(p) for p in written))
    if tracking_uri:
        summary["mlflow_run_id"] = log_to_mlflow(
            summary, out, tracking_uri, artifact_root, run_name, experiment_name, extra_params
        )
        if not quiet:
            print(f"logged MLflow run {summary['mlflow_run_id']} ({experiment_name!r}, {tracking_uri})")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", type=Path, help=f"run dir (holding {LOG_NAME}) or a request log")
    parser.add_argument("--no-plot", action="store_true", help="skip report.png")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the accounting does not balance")
    parser.add_argument(
        "--mlflow", action="store_true", help=f"log the run to MLflow (experiment {EXPERIMENT!r})"
    )
    parser.add_argument(
        "--tracking-uri", default=DEFAULT_TRACKING_URI, help="MLflow store (relative: the project's)"
    )
    parser.add_argument(
        "--artifact-root", default=DEFAULT_ARTIFACT_ROOT, help="MLflow artifacts (new experiment)"
    )
    parser.add_argument("--run-name", help="MLflow run name (default: shape, kinds, run dir)")
    args = parser.parse_args(argv)
    try:
        summary = report(
            args.target,
            make_plot=not args.no_plot,
            tracking_uri=args.tracking_uri if args.mlflow else None,
            artifact_root=args.artifact_root,
            run_name=args.run_name,
        )
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if args.strict and not summary["accounting"]["balanced"] else 0


if __name__ == "__main__":
    sys.exit(main())
