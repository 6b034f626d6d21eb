"""Where the project's files are: relative paths in configs are the checkout's, not the caller's.

Imports nothing heavy (no Ray, no MLflow): Locust, bare GPU boxes and the runtimes import it too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RAY_COPY_MARKER = "runtime_resources/working_dir_files/"  # where Ray unpacks a runtime_env working_dir
SQLITE_PREFIX = "sqlite:///"


def project_path(path: str | Path) -> Path:
    """Relative paths are the project's: replicas and CLIs do not share one working directory."""
    return Path(path) if Path(path).is_absolute() else PROJECT_ROOT / path


def _is_checkout(path: Path) -> bool:
    """This project's folder, and not a copy Ray unpacked for a runtime_env."""
    is_project = (path / "pyproject.toml").is_file() and (path / "infergraph" / "deployments").is_dir()
    return is_project and RAY_COPY_MARKER not in path.as_posix()


def _launch_dirs() -> Iterator[Path]:
    """Where the processes this one descends from run (a local cluster's raylet: where `serve run`
    started it), then the shell's last directories (a worker is started by `cd <copy> && ...`)."""
    try:
        import psutil  # a Ray dependency

        for parent in psutil.Process().parents():
            with contextlib.suppress(psutil.Error, OSError):
                yield Path(parent.cwd())
    except Exception:  # no psutil, or no /proc: only the environment is left
        pass
    for var in ("OLDPWD", "PWD"):
        if os.environ.get(var):
            yield Path(os.environ[var])


def launch_root() -> Path:
    """The checkout whose `mlflow/` store and artifact folders relative paths mean.

    Under `uv run serve run ...` (Ray's uv hook) or a runtime_env `working_dir`, replicas run a packaged
    copy of the project that leaves out ignored folders such as `mlflow/`, so this file's own project
    is the wrong place to look. In order: `INFERGRAPH_ROOT`; this file's project unless it is such a
    copy; the checkout the local cluster was started from (see `_launch_dirs`); else this file's
    project (a store there then reads as missing, and the card's `variant_reason` shows the path).
    """
    if os.environ.get("INFERGRAPH_ROOT"):
        return Path(os.environ["INFERGRAPH_ROOT"]).expanduser()
    if RAY_COPY_MARKER not in PROJECT_ROOT.as_posix():
        return PROJECT_ROOT
    return next((path for path in _launch_dirs() if _is_checkout(path)), PROJECT_ROOT)


def absolute_tracking_uri(uri: str, root: Path | None = None) -> str:
    """`sqlite:///mlflow/mlflow.db` is relative to the checkout (`root`, default `launch_root()`), not
    to the working dir of whoever opens it; other URIs are returned as they are."""
    path = uri.removeprefix(SQLITE_PREFIX)
    if uri.startswith(SQLITE_PREFIX) and path and not path.startswith(("/", ":memory:")):
        return SQLITE_PREFIX + str((root or launch_root()) / path)
    return uri


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI (None for other stores)."""
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    path = tracking_uri.removeprefix(SQLITE_PREFIX).split("?", 1)[0]
    return None if path.startswith(":memory:") else Path(path)
