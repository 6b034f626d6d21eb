"""Write a copy of a serve config whose tenants file lets keyless requests in as the `dev` tenant,
optionally serving only some of its models (the rest of the config unchanged).

For load generators that cannot send an API key (the peer benchmark's). Usage:
    uv run python -m infergraph.bench.open_config configs/serve.yaml /tmp/serve-open.yaml [MODEL ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from infergraph.paths import project_path
from infergraph.testing.service import serving_only


def open_config(source: Path, target: Path, tenant: str = "dev", models: list[str] | None = None) -> Path:
    config = serving_only(models, source) if models else yaml.safe_load(source.read_text())
    for app in config["applications"]:
        tenants_path = project_path(app.get("args", {}).get("tenants", "configs/tenants.yaml"))
        tenants = yaml.safe_load(tenants_path.read_text())
        tenants["anonymous_tenant"] = tenant
        open_tenants = target.with_name(f"{target.stem}-tenants.yaml")
        open_tenants.write_text(yaml.safe_dump(tenants))
        app.setdefault("args", {})["tenants"] = str(open_tenants.resolve())
    target.write_text(yaml.safe_dump(config))
    return target


if __name__ == "__main__":
    open_config(Path(sys.argv[1]), Path(sys.argv[2]), models=sys.argv[3:])
