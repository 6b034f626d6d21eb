"""Per-tier report of a Locust run of loadtest/locustfile.py, from its per-request log (`--ig-log`).

    uv run python -m loadtest.report results/overload/<run>            # a run dir
    uv run python -m loadtest.report results/overload/<run>/requests.jsonl

Reads `requests.jsonl` (one line per completed request), `requests.meta.json` (requests sent per
tier, phases) and Locust's `--csv` stats when present; prints per-tier and per-phase tables and
the accounting line, writes `summary.json` and `report.png` next to the log.

Accounting: every request sent is answered (200), refused with an explicit HTTP error (429/503
with an error code, or another 4xx/5xx), or unaccounted: no HTTP answer (connection error,
client timeout) or still in flight when Locust stopped (sent per the meta file, never logged).
The run balances when answered + HTTP errors = sent.

Imports neither locust (it would monkey-patch this process) nor anything heavy at module level:
Locust imports this file too when given `-f loadtest/`.
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
PHASE_ORDER = ("constant", "warmup", "overload", "recover")
REJECT_STATUSES = (429, 503)
LOG_NAME = "requests.jsonl"


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


def _group_stats(records: Sequence[dict[str, Any]], sent: int, seconds: float) -> dict[str, Any]:
    """Counts and latencies of one group of requests (a tier, a phase of a tier, or all)."""
    answered = [r for r in records if r["status"] == 200]
    rejected: Counter[str] = Counter()
    other: Counter[str] = Counter()
    transport = 0
    for r in records:
        status = r["status"]
        if status == 200:
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
    in_deadline = sum(1 for r in answered if r.get("deadline_ms") and r["latency_ms"] <= r["deadline_ms"])
    retry_after = [float(r["retry_after"]) for r in records if r.get("retry_after") is not None]
    return {
        "sent": sent,
        "completed": len(records),
        "answered": len(answered),
        "rejected": dict(rejected.most_common()),
        "rejected_total": sum(rejected.values()),
        "other_errors": dict(other.most_common()),
        "http_errors": http_errors,
        "transport_errors": transport,
        "lost_in_flight": max(0, lost),
        "unaccounted": transport + max(0, lost),
        "over_logged": max(0, -lost),  # more log lines than requests sent: the meta file is wrong
        "latency_ms": _latency_stats(latencies),
        "queue_ms": _latency_stats(queue),
        "retry_after_s": _latency_stats(retry_after),
        "seconds": round(seconds, 3),
        "rps_answered": round(len(answered) / seconds, 2) if seconds > 0 else None,
        "sentences_per_s": round(sum(r["sentences"] for r in answered) / seconds, 1) if seconds > 0 else None,
        "within_deadline_pct": round(100 * in_deadline / len(answered), 2) if answered else None,
        "goodput_pct": round(100 * in_deadline / sent, 2) if sent else None,
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

    # Phases: durations from the shape's plan when known, else the span of the phase's sends.
    planned = {p["phase"]: float(p["duration_s"]) for p in meta.get("phases") or []}
    by_phase: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_phase[r.get("phase") or "constant"].append(r)
    phases: dict[str, Any] = {}
    for phase in _order(by_phase, PHASE_ORDER):
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

    balanced = all(
        s["http_errors"] + s["answered"] == s["sent"] and not s["over_logged"] for s in summary_tiers.values()
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
        for t in sorted(set(tiers) | set(locust_stats)):
            ls = locust_stats.get(t, {"requests": 0, "failures": 0})
            mine = {"requests": len(by_tier[t]), "failures": sum(1 for r in by_tier[t] if r["status"] != 200)}
            if ls != mine:
                mismatches.append({"tier": t, "locust": ls, "log": mine})
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
        "total": total,
        "phases": phases,
        "phase_plan": plan,
        "deadline_ms": meta.get("deadline_ms") or {},
        "accounting": accounting,
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


def report(target: Path, make_plot: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Summarize a run; writes summary.json (and report.png) next to the log. Returns the summary."""
    log, meta_path, stats_path, out = find_inputs(target)
    records = read_requests(log)
    meta = json.loads(meta_path.read_text()) if meta_path else None
    locust_stats = read_locust_stats(stats_path) if stats_path else None
    source = "json" if stats_path is not None and stats_path.suffix == ".json" else "csv"
    summary = summarize(records, meta, locust_stats, source)
    summary["inputs"] = {"log": str(log), "meta": str(meta_path or ""), "locust_stats": str(stats_path or "")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if make_plot and records:
        plot(records, summary, out / "report.png")
    if not quiet:
        print_report(summary, title=str(out))
        print(
            f"wrote {out / 'summary.json'}" + (f" and {out / 'report.png'}" if make_plot and records else "")
        )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", type=Path, help=f"run dir (holding {LOG_NAME}) or a request log")
    parser.add_argument("--no-plot", action="store_true", help="skip report.png")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the accounting does not balance")
    args = parser.parse_args(argv)
    try:
        summary = report(args.target, make_plot=not args.no_plot)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if args.strict and not summary["accounting"]["balanced"] else 0


if __name__ == "__main__":
    sys.exit(main())
