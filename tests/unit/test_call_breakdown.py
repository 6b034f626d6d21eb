"""The call breakdown splits a request's time into stages that add up to what the client saw."""

from infergraph.bench.call_breakdown import breakdown


def test_the_stages_add_up_to_the_client_latency():
    # 100 requests in the window, means: router 20 ms, of which queue 2 and a call of 1+4+6+1+3
    after = {
        "router": (2.0, 100),
        "queue": (0.2, 100),
        "outbound": (0.1, 100),
        "replica_wait": (0.4, 100),
        "batch": (0.6, 100),
        "replica_other": (0.1, 100),
        "inbound": (0.3, 100),
    }
    stages = breakdown({key: (0.0, 0.0) for key in after}, after, client_mean_s=0.025)
    assert stages == {
        "client and HAProxy": 5.0,
        "router queue": 2.0,
        "call: outbound": 1.0,
        "call: replica_wait": 4.0,
        "call: batch": 6.0,
        "call: replica_other": 1.0,
        "call: inbound": 3.0,
        "router other": 3.0,
    }
    assert round(sum(stages.values()), 6) == 25.0
