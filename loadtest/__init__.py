"""Locust load tests of the embeddings API (`loadtest/locustfile.py`) and their report (`loadtest/report.py`).

Locust loads every `*.py` here that does not start with `_` when given `-f loadtest/`; `report.py` is
imported then too, which is harmless: it imports neither locust nor anything heavy at module level.
"""
