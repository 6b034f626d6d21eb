"""Speech-to-text side by side in one run on this machine: infergraph's service against faster-whisper
used directly on the same CTranslate2 weights and whisper.cpp (pywhispercpp) on the same weights
converted to ggml f16, greedy, English, no temperature fallback.

    uv run python -m infergraph.bench.speech                 # tiny.en int8, 3 rounds (~14 min on 2 cores)
    uv run python -m infergraph.bench.speech --precision fp32
    uv run python -m infergraph.bench.speech --no-whisper-cpp  # without the whisper.cpp peer

Clips are read aloud by festival from known sentences (optimize/speech_data.py picks them), several
sentences per clip with 0.6 s pauses, lengths mixed from ~5 s to ~140 s. Each system runs alone on the
machine, alternated over `--rounds` rounds (default 3: this box's speed drifts by 10% between
minutes); the table shows medians. Measured:

1. Real-time factor (compute seconds per audio second) of one 30 s clip, median of 3: faster-whisper
   `WhisperModel.transcribe` and whisper.cpp's `whisper_full` in process; infergraph through HTTP
   (everything a client waits for).
2. Aggregate audio seconds per second over all clips: faster-whisper one clip at a time (its plain
   `transcribe`, and its `BatchedInferencePipeline`, which cuts at silences and batches one clip's
   windows); whisper.cpp one clip at a time (ggml f16 of the same weights, `ggml_convert.py`, as many
   threads as the machine has cores); infergraph with 8 concurrent clients, each sending its share of
   the clips.
3. Word error rate of each system on those clips (numbers normalised like the optimize pipeline's).
4. Premium under a flood: batch-tier clients send the long clips back to back while a premium client
   sends a short clip every second; premium latency p50/p99 and refusals, batch progress.

Writes results/speech/bench.json and bench.png.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from infergraph.optimize.speech_data import select_sentences, wer
from infergraph.paths import PROJECT_ROOT
from infergraph.runtimes.sources import cache_root
from infergraph.runtimes.speech.engine import SAMPLE_RATE
from infergraph.testing.service import serving_only, start_service
from infergraph.testing.speech import encode, silence, synthesize

KEYS = {"premium": "sk-ig-demo-premium", "standard": "sk-ig-dev", "batch": "sk-ig-demo-batch"}
CLIP_SENTENCES = (1, 2, 3, 5, 8, 12, 16)  # sentences per clip: ~4 s to ~80 s
CLIENTS = 8


@dataclass
class Clip:
    text: str
    audio: np.ndarray = field(repr=False)

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    @functools.cached_property
    def flac(self) -> bytes:
        """Encoded once, before any timing: clients' encoding is not the server's cost."""
        return encode(self.audio, "flac")


def build_clips(count: int, console: Console) -> tuple[list[Clip], Clip]:
    """`count` clips of mixed length, and one of 30 s for the real-time factor (cached as .npz)."""
    path = cache_root() / "bench" / "speech" / f"clips-{count}.npz"
    lengths = [CLIP_SENTENCES[i % len(CLIP_SENTENCES)] for i in range(count)] + [6]
    sentences = select_sentences(sum(lengths))
    texts, k = [], 0
    for n in lengths:
        texts.append(sentences[k : k + n])
        k += n
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        audios = {}
        with console.status("festival is reading the clips") as status:
            for i, group in enumerate(texts):
                status.update(f"festival is reading clip {i + 1}/{len(texts)}")
                audios[f"c{i}"] = np.concatenate(
                    [np.concatenate([synthesize(s), silence(0.6)]) for s in group]
                )
        np.savez_compressed(path, **audios)  # type: ignore[arg-type]
    stored = np.load(path)
    clips = [Clip(" ".join(group), stored[f"c{i}"]) for i, group in enumerate(texts)]
    return clips[:-1], Clip("", clips[-1].audio[: 30 * SAMPLE_RATE])  # one 30 s window, for RTF only


# --- faster-whisper, in process --------------------------------------------------------------------
def faster_whisper_runs(model_dir: Path, precision: str, clips: list[Clip], rtf_clip: Clip) -> list[dict]:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    compute = {"int8": "int8", "fp32": "float32"}[precision]
    model = WhisperModel(str(model_dir), device="cpu", compute_type=compute, cpu_threads=2)
    batched = BatchedInferencePipeline(model)
    options = {"language": "en", "beam_size": 1, "temperature": 0.0}

    def plain(audio: np.ndarray) -> str:
        return "".join(s.text for s in model.transcribe(audio, **options)[0])

    def pipeline(audio: np.ndarray) -> str:
        return "".join(s.text for s in batched.transcribe(audio, batch_size=8, **options)[0])

    rows = []
    for label, run in (("faster-whisper", plain), ("faster-whisper batched", pipeline)):
        run(rtf_clip.audio[: SAMPLE_RATE * 5])  # warm-up
        rtf = statistics.median(_timed(functools.partial(run, rtf_clip.audio)) for _ in range(3))
        rtf /= rtf_clip.seconds
        began, texts = time.perf_counter(), [run(c.audio) for c in clips]
        took = time.perf_counter() - began
        rows.append(_row(label, "one clip at a time, in process", rtf, clips, texts, took))
    return rows


# --- whisper.cpp, in process ----------------------------------------------------------------------
def whisper_cpp_runs(ggml: Path, clips: list[Clip], rtf_clip: Clip, threads: int) -> list[dict]:
    """pywhispercpp's `Model` on the ggml file: greedy, English, no temperature fallback
    (`temperature_inc` 0), non-speech tokens suppressed (as faster-whisper's default `suppress_tokens`),
    no conditioning on previous text: whisper.cpp keeps that text in its state from one call to the
    next, so it would leak from one clip into the next."""
    from pywhispercpp.model import Model

    model = Model(
        str(ggml), redirect_whispercpp_logs_to=None, n_threads=threads, language="en", temperature=0.0,
        temperature_inc=0.0, no_context=True, suppress_nst=True, print_progress=False, print_realtime=False,
    )  # fmt: skip

    def run(audio: np.ndarray) -> str:
        segments = model.transcribe(np.ascontiguousarray(audio, dtype=np.float32))
        return " ".join(s.text.strip() for s in segments)  # whisper.cpp's segments may not start with a space

    run(rtf_clip.audio[: SAMPLE_RATE * 5])  # warm-up
    rtf = statistics.median(_timed(functools.partial(run, rtf_clip.audio)) for _ in range(3))
    rtf /= rtf_clip.seconds
    began, texts = time.perf_counter(), [run(c.audio) for c in clips]
    took = time.perf_counter() - began
    how = f"one clip at a time, in process, ggml f16, {threads} threads"
    return [_row("whisper.cpp", how, rtf, clips, texts, took)]


def _timed(run: Callable[[], object]) -> float:
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


def _row(label: str, how: str, rtf: float, clips: list[Clip], texts: list[str], took: float) -> dict:
    audio_s = sum(c.seconds for c in clips)
    return {
        "system": label,
        "how": how,
        "rtf_30s": rtf,
        "audio_s_per_s": audio_s / took,
        "wall_s": took,
        "wer": wer([c.text for c in clips], texts),
    }


# --- infergraph, through the service ---------------------------------------------------------------
def serve_config(model: str, engine: str, precision: str, workdir: Path) -> Path:
    catalog = yaml.safe_load((PROJECT_ROOT / "configs" / "models.yaml").read_text())
    entry = next(m for m in catalog["models"] if m["name"] == model)
    entry.update(engine=engine, precision=precision)
    (workdir / "models.yaml").write_text(yaml.safe_dump(catalog))
    cfg = serving_only([model])
    app = cfg["applications"][0]
    app["args"]["catalog"] = str(workdir / "models.yaml")
    app["args"]["registry"]["default_variant"] = "base"  # the settings above, whatever was promoted
    path = workdir / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def transcribe(url: str, model: str, clip: Clip, key: str, timeout: float = 600) -> httpx.Response:
    files = {"file": ("clip.flac", clip.flac)}
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(url, files=files, data={"model": model}, headers=headers, timeout=timeout)


def infergraph_runs(url: str, model: str, clips: list[Clip], rtf_clip: Clip) -> list[dict]:
    """The RTF clip as a standard-tier client; the throughput run as bulk work (batch tier: its 30 s
    deadline fits a backlog of 8 clients' long clips, the standard tier's 5 s does not)."""
    refused: list[str] = []

    def text(clip: Clip, key: str = KEYS["standard"]) -> str:
        r = transcribe(url, model, clip, key)
        if r.status_code != 200:
            refused.append(r.text)
            return ""
        return str(r.json()["text"])

    text(rtf_clip)  # warm-up
    rtf = statistics.median(_timed(lambda: text(rtf_clip)) for _ in range(3)) / rtf_clip.seconds
    began = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:  # each client sends its share of the clips in turn
        shares = [clips[i::CLIENTS] for i in range(CLIENTS)]
        done = list(pool.map(lambda share: [text(c, KEYS["batch"]) for c in share], shares))
    took = time.perf_counter() - began
    texts = {
        id(c): t for share, out in zip(shares, done, strict=True) for c, t in zip(share, out, strict=True)
    }
    ordered = [texts[id(c)] for c in clips]
    row = _row("infergraph", f"{CLIENTS} concurrent clients, HTTP", rtf, clips, ordered, took)
    return [{**row, "refused": len(refused), "last_refusal": refused[-1] if refused else None}]


def flood(url: str, model: str, long_clips: list[Clip], short: Clip, seconds: float) -> dict:
    """Batch-tier clients keep the service busy with long clips; premium sends `short` every second."""
    stop = threading.Event()
    batch_done: list[int] = []
    premium_ms: list[float] = []
    premium_errors: list[float] = []

    def bulk(i: int) -> None:
        k = i
        while not stop.is_set():
            r = transcribe(url, model, long_clips[k % len(long_clips)], KEYS["batch"])
            batch_done.append(r.status_code)
            k += 1

    threads = [threading.Thread(target=bulk, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(5)  # the flood is running
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        sent = time.perf_counter()
        r = transcribe(url, model, short, KEYS["premium"])
        (premium_ms if r.status_code == 200 else premium_errors).append((time.perf_counter() - sent) * 1000)
        time.sleep(max(0.0, 1.0 - (time.perf_counter() - sent)))
    stop.set()
    for t in threads:
        t.join(timeout=600)
    ms = sorted(premium_ms)
    return {
        "premium_requests": len(ms) + len(premium_errors),
        "premium_refused": len(premium_errors),
        "premium_p50_ms": ms[len(ms) // 2] if ms else None,
        "premium_p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))] if ms else None,
        "premium_clip_s": short.seconds,
        "batch_answered": batch_done.count(200),
        "batch_other": len(batch_done) - batch_done.count(200),
        "batch_clip_s": statistics.mean(c.seconds for c in long_clips),
    }


def whisper_cpp_info(ggml: Path, threads: int) -> dict:
    """What the whisper.cpp figures were measured with: the wheel's version and build (CPU features
    its ggml was compiled for), the threads, and the converted file."""
    import importlib.metadata

    import _pywhispercpp

    return {
        "pywhispercpp": importlib.metadata.version("pywhispercpp"),
        "system_info": _pywhispercpp.whisper_print_system_info().strip(),
        "threads": threads,
        "ggml": str(ggml),
    }


def _median_row(rows: list[dict]) -> dict:
    """One system's figures over the rounds: the median of each number."""
    numbers = {k for k, v in rows[0].items() if isinstance(v, int | float)}
    return {k: statistics.median(r[k] for r in rows) if k in numbers else v for k, v in rows[0].items()}


def report(rows: list[dict], flooded: dict, console: Console, title: str) -> None:
    table = Table(title=title)
    for col in ("system", "how", "RTF (30 s clip)", "audio s/s (median)", "x faster-whisper", "WER"):
        table.add_column(col, justify="left" if col in ("system", "how") else "right")
    peer = next(r["audio_s_per_s"] for r in rows if r["system"] == "faster-whisper")
    for r in rows:
        table.add_row(r["system"], r["how"], f"{r['rtf_30s']:.3f}", f"{r['audio_s_per_s']:.1f}",
                      f"{r['audio_s_per_s'] / peer:.2f}x", f"{r['wer']:.3f}")  # fmt: skip
    console.print(table)
    console.print(
        f"premium under a batch flood: {flooded['premium_requests']} requests of "
        f"{flooded['premium_clip_s']:.1f} s, "
        f"p50 {flooded['premium_p50_ms']:.0f} ms, p99 {flooded['premium_p99_ms']:.0f} ms, "
        f"{flooded['premium_refused']} refused; batch answered {flooded['batch_answered']} clips of "
        f"~{flooded['batch_clip_s']:.0f} s ({flooded['batch_other']} not)"
    )


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["system"] for r in rows]
    left.barh(names, [r["audio_s_per_s"] for r in rows], color="tab:blue")
    left.set_xlabel("audio seconds per second (higher is better)")
    right.barh(names, [r["rtf_30s"] for r in rows], color="tab:orange")
    right.set_xlabel("real-time factor, one 30 s clip (lower is better)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="whisper-tiny.en")
    ap.add_argument("--engine", default="ctranslate2", choices=["ctranslate2", "torch"])
    ap.add_argument("--precision", default="int8", choices=["int8", "fp32"])
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--flood-s", type=float, default=30)
    ap.add_argument("--rounds", type=int, default=3,
                    help="faster-whisper, whisper.cpp, then infergraph, this many times")  # fmt: skip
    ap.add_argument("--whisper-cpp", action=argparse.BooleanOptionalAction, default=True,
                    help="whisper.cpp (pywhispercpp) as a peer, on the weights as ggml f16")  # fmt: skip
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="whisper.cpp's threads")
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "speech")
    a = ap.parse_args(argv)
    console = Console(width=150)
    clips, rtf_clip = build_clips(a.clips, console)
    for clip in [*clips, rtf_clip]:
        assert clip.flac
    audio_s = sum(c.seconds for c in clips)
    console.print(f"{len(clips)} clips, {audio_s:.0f} s of audio ({min(c.seconds for c in clips):.1f}-"
                  f"{max(c.seconds for c in clips):.1f} s); RTF clip {rtf_clip.seconds:.1f} s")  # fmt: skip
    from infergraph.runtimes.catalog import load_catalog
    from infergraph.runtimes.speech.weights import resolve_ct2_dir

    spec = load_catalog(PROJECT_ROOT / "configs" / "models.yaml").get(a.model)
    model_dir = resolve_ct2_dir(spec.source)  # type: ignore[union-attr]
    ggml = None
    if a.whisper_cpp:
        from infergraph.runtimes.speech.ggml_convert import resolve_ggml_file

        ggml = resolve_ggml_file(spec.source)  # type: ignore[union-attr]
        info = whisper_cpp_info(ggml, a.threads)
        console.print(f"whisper.cpp: pywhispercpp {info['pywhispercpp']}, {a.threads} threads, {ggml.name}; "
                      f"{info['system_info']}")  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="ig-speech-bench-"))
    rounds: list[list[dict]] = []
    flooded: dict = {}
    for n in range(a.rounds):  # alternated, each system alone on the machine: drift hits both
        with console.status(f"round {n + 1}/{a.rounds}: faster-whisper"):
            rows = faster_whisper_runs(model_dir, a.precision, clips, rtf_clip)
        if ggml is not None:
            with console.status(f"round {n + 1}/{a.rounds}: whisper.cpp"):
                rows += whisper_cpp_runs(ggml, clips, rtf_clip, a.threads)
        service = start_service(serve_config(a.model, a.engine, a.precision, workdir))
        try:
            url = f"{service.base_url}/v1/audio/transcriptions"
            with console.status(f"round {n + 1}/{a.rounds}: infergraph"):
                rows += infergraph_runs(url, a.model, clips, rtf_clip)
            if n == a.rounds - 1:
                longest = sorted(clips, key=lambda c: c.seconds)[-4:]
                shortest = min(clips, key=lambda c: c.seconds)
                with console.status("premium under a batch flood"):
                    flooded = flood(url, a.model, longest, shortest, a.flood_s)
        finally:
            service.stop()
        rounds.append(rows)
        peer = rows[0]["audio_s_per_s"]
        speeds = [f"{r['system']} {r['audio_s_per_s']:.1f} ({r['audio_s_per_s'] / peer:.2f}x)" for r in rows]
        console.print(f"round {n + 1}, audio s/s: " + ", ".join(speeds))
    rows = [_median_row([r[i] for r in rounds]) for i in range(len(rounds[0]))]
    title = (
        f"{a.model} {a.engine} {a.precision}, 2 threads, greedy, {audio_s:.0f} s of audio, {len(clips)} clips"
    )
    report(rows, flooded, console, title)
    a.out.mkdir(parents=True, exist_ok=True)
    result = {"model": a.model, "engine": a.engine, "precision": a.precision, "rows": rows, "rounds": rounds,
              "flood": flooded, "clips": [{"seconds": c.seconds} for c in clips],
              "whisper_cpp": whisper_cpp_info(ggml, a.threads) if ggml is not None else None}  # fmt: skip
    (a.out / "bench.json").write_text(json.dumps(result, indent=2))
    plot(rows, a.out / "bench.png", title)
    console.print(f"wrote {a.out / 'bench.json'} and bench.png")


if __name__ == "__main__":
    main()
