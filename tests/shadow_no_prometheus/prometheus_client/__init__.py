"""Stands in for prometheus_client in ``test_metrics.py``: put this folder first
on PYTHONPATH and ``import prometheus_client`` fails as it does in an install
without the ``metrics`` extra."""

raise ImportError("prometheus_client is hidden by the test (an install without the extra)")
