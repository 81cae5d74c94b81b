"""The peer benchmark's WSGI app: a Flask JSON endpoint (``flask_json:app``).

Every request to ``/`` gets ``200`` and a small JSON document from
``jsonify`` (Flask sets its Content-Length), the way a typical Flask API
answers.  Nothing here depends on the server, so each one runs the same bytes
of Python per request.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/")
def index() -> Any:
    return jsonify(message="Hello, world!", items=[1, 2, 3])
