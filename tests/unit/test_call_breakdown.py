"""The call breakdown splits a request's time into stages that add up to what the client saw."""

from infergraph.bench.call_breakdown import breakdown


def test_the_stages_add_up_to_the_client_latency():
    before = {"router": (1.0, 10), "queue": (0.1, 10), "replica_wait": (0.2, 10), "batch": (0.3, 10)}
    # 100 requests in the window: router 20 ms each, queue 2, replica batcher 4, batch 6 ms
    after = {"router": (3.0, 110), "queue": (0.3, 110), "replica_wait": (0.6, 110), "batch": (0.9, 110)}
    stages = breakdown(before, after, client_mean_s=0.025)
    assert stages == {
        "client and HAProxy": 5.0,
        "router queue": 2.0,
        "replica batcher": 4.0,
        "batch compute": 6.0,
        "transit": 8.0,
    }
    assert sum(stages.values()) == 25.0
