"""Helpers for tests and benchmarks that drive the real service (`testing/service.py`).

`DEV_KEY` and `ADMIN_KEY` live here, not in `service.py`, so callers that only need the key import nothing.
"""

DEV_KEY = "sk-ig-dev"  # the development tenant of configs/tenants.yaml
ADMIN_KEY = "sk-ig-admin"  # its development admin key (GET /admin/usage, /metrics)
UNTRAINED_CROSS_ENCODER = "cross-encoder-untrained"  # test-only re-ranker: real cost, meaningless scores
