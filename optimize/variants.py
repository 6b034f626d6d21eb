"""Variants of an exported encoder. Each returns the path of an ONNX file that `OnnxEngine` loads.

Dynamic INT8 (optimum's ORTQuantizer over ONNX Runtime): weights stored as int8, activations
quantised per batch at run time, so it needs no calibration data. This CPU has AVX2 but not
AVX-512 VNNI, hence the avx2 configuration (u8 activations, s8 weights).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

INT8_FILE = "model_quantized.onnx"


def dynamic_int8(onnx_path: Path, out_dir: Path, per_channel: bool = True) -> Path:
    """Quantise `onnx_path` (an optimum export folder's model.onnx) into `out_dir` once; reuse it after."""
    target = out_dir / INT8_FILE
    if target.exists():
        return target
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("dynamic INT8 of %s -> %s", onnx_path, out_dir)
    quantizer = ORTQuantizer.from_pretrained(onnx_path.parent, file_name=onnx_path.name)
    config = AutoQuantizationConfig.avx2(is_static=False, per_channel=per_channel)
    quantizer.quantize(quantization_config=config, save_dir=tmp)
    tmp.rename(out_dir)
    return target
