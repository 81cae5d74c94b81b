"""``reuseport bench``: compare the listen modes under identical load.

Modules: ``stats`` (histogram, fairness), ``loadgen`` (built-in client),
``wrk`` (the optional wrk driver), ``scenarios``, ``server`` (the server under
test), ``events`` (what its master counted, from its status snapshot),
``runner`` (runs and medians), ``report`` (table, verdicts, JSON), ``plot``
(matplotlib chart) and ``cli`` (argparse wiring).
"""

from __future__ import annotations

__all__: list[str] = []
