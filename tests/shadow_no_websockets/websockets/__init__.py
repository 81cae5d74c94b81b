"""Stands in for the websockets package in ``test_websocket_serve.py``: put this
folder first on PYTHONPATH and ``import websockets`` fails as it does in an
install without the ``websockets`` extra."""

raise ImportError("websockets is hidden by the test (an install without the extra)")
