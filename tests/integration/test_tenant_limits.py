"""A tenant's rate limit holds for the tenant as a whole with three router replicas (TenantLedger)."""

import pytest

from infergraph.bench.tenant_limits import measure

pytestmark = pytest.mark.integration


def test_three_routers_admit_the_tenants_rate_not_three_times_it(tmp_path):
    m = measure(tmp_path, routers=3, shared=True, rps=20, seconds=5)
    assert m.other == 0 and m.refused > 0
    assert 0.9 <= m.ratio <= 1.1, f"admitted {m.admitted} of {m.allowed:.0f} allowed"
