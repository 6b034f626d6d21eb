#!/usr/bin/env python3
"""In-process ceiling: encode the corpus with no server.

Engines:
  st        sentence-transformers FP32 (torch), model.encode(chunk, batch_size=B) per chunk of B sentences
  ort       onnxruntime on an ONNX file (FP32 or dynamic INT8): HF fast tokenizer + session.run
            + mean pool + L2 norm
Each call processes one chunk of B consecutive corpus sentences (wrapping), like one server batch.
Reports per batch size: sentences/s, calls/s, p50/p95/p99 per-call latency, CPU% (of one core), RSS.

Modes:
  --mode bench     (default) timed runs
  --mode accuracy  cosine similarity between two engines' embeddings over the whole corpus
  --mode flops     token-length stats of the corpus and FLOPs/sentence + theoretical max sentences/s
"""

import argparse
import json
import os
import resource
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "..", "loadtest", "corpus_en.jsonl")  # the project's frozen corpus


def load_corpus(path):
    with open(path) as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def pct(v, p):
    return float(np.percentile(np.asarray(v), p)) if v else float("nan")


class STEngine:
    def __init__(self, model_dir, threads):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self.model = SentenceTransformer(model_dir, device="cpu")
        self.max_len = self.model.max_seq_length
        self.torch = torch

    def encode(self, sents, bs):
        with self.torch.inference_mode():
            return self.model.encode(sents, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True)


class ORTEngine:
    def __init__(self, model_dir, onnx_file, threads, max_len=256):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(onnx_file, so, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.sess.get_inputs()}
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.max_len = max_len

    def encode(self, sents, bs):
        if len(sents) > bs:  # like sentence-transformers: sort the call by length, batch, restore order
            order = np.argsort([-len(x) for x in sents], kind="stable")
            outs = [
                self._encode_batch([sents[i] for i in order[j : j + bs]]) for j in range(0, len(sents), bs)
            ]
            res = np.empty((len(sents), outs[0].shape[1]), dtype=np.float32)
            res[order] = np.concatenate(outs)
            return res
        return self._encode_batch(sents)

    def _encode_batch(self, batch):
        enc = self.tok(batch, padding=True, truncation=True, max_length=self.max_len, return_tensors="np")
        feed = {k: v.astype(np.int64) for k, v in enc.items() if k in self.inputs}
        hid = self.sess.run(None, feed)[0]
        m = enc["attention_mask"][..., None].astype(np.float32)
        e = (hid * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        return e.astype(np.float32)


def make_engine(a, which=None, onnx=None):
    which = which or a.engine
    if which == "st":
        return STEngine(a.model_dir, a.threads)
    return ORTEngine(a.model_dir, onnx or a.onnx, a.threads)


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bench(a):
    corpus = load_corpus(a.corpus)
    n = len(corpus)
    eng = make_engine(a)
    rss_loaded = rss_mb()
    for bs in [int(x) for x in a.batch_sizes.split(",")]:
        k = 0

        # sentences per call; > bs means the engine sorts/splits the call into batches of bs
        cs = a.chunk or bs

        def chunk(k, cs=cs):
            s = (k * cs) % n
            return [corpus[(s + j) % n] for j in range(cs)]

        t_end = time.perf_counter() + a.warmup
        while time.perf_counter() < t_end:
            eng.encode(chunk(k), bs)
            k += 1
        lat = []
        c0 = os.times()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < a.duration:
            t1 = time.perf_counter()
            eng.encode(chunk(k), bs)
            lat.append(time.perf_counter() - t1)
            k += 1
        el = time.perf_counter() - t0
        c1 = os.times()
        cpu = (c1.user - c0.user) + (c1.system - c0.system)
        res = {
            "label": a.label or f"inproc-{a.engine}",
            "engine": a.engine,
            "onnx": os.path.basename(a.onnx) if a.engine == "ort" else None,
            "threads": a.threads,
            "batch": bs,
            "duration_s": round(el, 2),
            "calls": len(lat),
            "chunk": cs,
            "sent_per_s": round(len(lat) * cs / el, 1),
            "calls_per_s": round(len(lat) / el, 2),
            "p50_ms": round(pct(lat, 50) * 1000, 2),
            "p95_ms": round(pct(lat, 95) * 1000, 2),
            "p99_ms": round(pct(lat, 99) * 1000, 2),
            "cpu_pct": round(100 * cpu / el, 1),
            "rss_after_load_mb": round(rss_loaded, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        line = json.dumps(res)
        print(line, flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(line + "\n")


def accuracy(a):
    corpus = load_corpus(a.corpus)
    ref = make_engine(a, "st").encode(corpus, 32)
    out = {"label": "accuracy", "n": len(corpus)}
    for name, path in [("ort_fp32", a.onnx_fp32), ("ort_int8", a.onnx_int8)]:
        if not path:
            continue
        e = make_engine(a, "ort", path).encode(corpus, 32)
        cos = (e * ref).sum(1)
        out[name + "_vs_st"] = {
            "mean": round(float(cos.mean()), 5),
            "min": round(float(cos.min()), 5),
            "p01": round(float(np.percentile(cos, 1)), 5),
        }
        if name == "ort_int8" and a.onnx_fp32:
            f = make_engine(a, "ort", a.onnx_fp32).encode(corpus, 32)
            c2 = (e * f).sum(1)
            out["ort_int8_vs_ort_fp32"] = {
                "mean": round(float(c2.mean()), 5),
                "min": round(float(c2.min()), 5),
                "p01": round(float(np.percentile(c2, 1)), 5),
            }
            # retrieval agreement: top-1 neighbour of each sentence among the corpus, INT8 vs FP32
            s_f = f @ f.T
            s_e = e @ e.T
            np.fill_diagonal(s_f, -1)
            np.fill_diagonal(s_e, -1)
            out["int8_top1_neighbour_agreement"] = round(float((s_f.argmax(1) == s_e.argmax(1)).mean()), 4)
    line = json.dumps(out)
    print(line)
    if a.out:
        with open(a.out, "a") as fh:
            fh.write(line + "\n")


def flops(a):
    from transformers import AutoConfig, AutoTokenizer

    corpus = load_corpus(a.corpus)
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    cfg = AutoConfig.from_pretrained(a.model_dir)
    lens = np.array([len(x) for x in tok(corpus, truncation=True, max_length=256)["input_ids"]])
    L, H, F = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size

    def fl(T):  # forward FLOPs for one sequence of T tokens (2 FLOPs per MAC)
        per_tok_macs = 4 * H * H + 2 * H * F + 2 * T * H  # QKV+out proj, FFN, QK^T + AV
        return 2 * L * T * per_tok_macs

    mean_T = float(lens.mean())
    per_sent_exact = float(np.mean([fl(t) for t in lens]))
    # padded cost for chunks of B in corpus order (what batch-of-B serving pays with pad-to-longest)
    padded = {}
    for B in (8, 32, 64):
        tot = 0.0
        for i in range(0, len(lens), B):
            c = lens[i : i + B]
            tot += len(c) * fl(int(c.max()))
        padded[B] = tot / len(lens)
    out = {
        "label": "flops",
        "tokens_mean": round(mean_T, 2),
        "tokens_p50": int(np.median(lens)),
        "tokens_p95": int(np.percentile(lens, 95)),
        "tokens_max": int(lens.max()),
        "layers": L,
        "hidden": H,
        "ffn": F,
        "gflop_per_sent_at_mean_len": round(fl(mean_T) / 1e9, 4),
        "gflop_per_sent_exact_mean": round(per_sent_exact / 1e9, 4),
        "gflop_per_sent_padded": {B: round(v / 1e9, 4) for B, v in padded.items()},
        f"max_sent_per_s_fp32_at_{a.gflops_fp32}_gflops": round(a.gflops_fp32 * 1e9 / fl(mean_T), 1),
        f"max_sent_per_s_bf16_at_{a.gflops_bf16}_gflops": round(a.gflops_bf16 * 1e9 / fl(mean_T), 1),
        "max_sent_per_s_fp32_padded_b32": round(a.gflops_fp32 * 1e9 / padded[32], 1),
    }
    line = json.dumps(out)
    print(line)
    if a.out:
        with open(a.out, "a") as fh:
            fh.write(line + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["bench", "accuracy", "flops"], default="bench")
    ap.add_argument("--engine", choices=["st", "ort"], default="st")
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--onnx", default="")
    ap.add_argument("--onnx-fp32", default="")
    ap.add_argument("--onnx-int8", default="")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--chunk",
        type=int,
        default=0,
        help="sentences per call (default = batch size). With st, encode() sorts a call by length "
        "before splitting it into batches, so chunk > batch shows the padding-free rate",
    )
    ap.add_argument("--batch-sizes", default="1,8,32,64")
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--corpus", default=CORPUS)
    ap.add_argument("--gflops-fp32", type=int, default=200)
    ap.add_argument("--gflops-bf16", type=int, default=850)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    {"bench": bench, "accuracy": accuracy, "flops": flops}[a.mode](a)


if __name__ == "__main__":
    main()
