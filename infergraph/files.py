"""Files and folders that appear complete or not at all.

Everything is written under a temporary name next to the target (the same filesystem, so the final
rename is atomic) and renamed into place, so an interrupted write never leaves a target that looks
finished. Temporary names are unique per writer (`.<name>.<random>.tmp`), so concurrent writers never
share one, and a failed write removes its own. Stdlib only: the runtimes import it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path


def _temp_name(target: Path, kind: str = "tmp") -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}.{kind}")


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """A fresh path next to `target` to write to; renamed to `target` when the block succeeds.

    For tools that write to a path themselves (ONNX savers, quantisers). A concurrent writer's file
    is replaced as a whole: readers see one complete file or the other.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(target: Path, data: bytes) -> Path:
    with atomic_file(target) as tmp, open(tmp, "xb") as f:
        f.write(data)
    return target


def atomic_write_text(target: Path, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(target, text.encode(encoding))


@contextlib.contextmanager
def scratch_dir(target: Path) -> Iterator[Path]:
    """An empty folder next to `target`, deleted with whatever is left in it when the block ends:
    work space for a folder that `move_into_place` installs."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def move_into_place(src: Path, target: Path, replace: bool = False) -> bool:
    """Rename the finished folder `src` to `target`. False when another writer's `target` is there
    and kept instead (it finished first, or `replace` is off).

    `replace`: an existing `target` is first renamed aside, then deleted; a reader sees the old
    folder or the new one (or, between the two renames, none), never a mix.
    """
    old = _temp_name(target, "old")
    if replace:
        with contextlib.suppress(FileNotFoundError):
            os.rename(target, old)
    try:
        os.rename(src, target)
    except OSError:
        if not target.is_dir():
            raise
        return False
    finally:
        shutil.rmtree(old, ignore_errors=True)
    return True


@contextlib.contextmanager
def atomic_dir(target: Path, replace: bool = False) -> Iterator[Path]:
    """An empty temporary folder to fill; it becomes `target` when the block succeeds and is deleted
    when it fails. When another writer's `target` appeared meanwhile, that copy is kept (and an old
    one too, unless `replace`)."""
    with scratch_dir(target) as tmp:
        yield tmp
        move_into_place(tmp, target, replace)
