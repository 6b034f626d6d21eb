"""Where the project's files are: relative paths in configs are the checkout's, not the caller's."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def project_path(path: str | Path) -> Path:
    """Relative paths are the project's: replicas and CLIs do not share one working directory."""
    return Path(path) if Path(path).is_absolute() else PROJECT_ROOT / path
