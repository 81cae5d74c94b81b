"""``python -m reuseport`` is ``reuseport``; ``main`` is also the script's entry point.

Why so little here: for ``serve``, the master's signal handlers go in
before anything else is imported (``signals.py`` says why), so a
``SIGTERM`` while the server starts is a clean stop, not a silent death.
"""

import sys

from .signals import install_early, serving


def main() -> int:
    if serving(sys.argv[1:]):
        install_early()
    from .cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
