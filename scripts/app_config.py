"""Print settings as the app resolves them: ``app_config.py NAME...`` gives ``NAME=value`` lines.

The scripts ask the app rather than reading the environment themselves, so defaults,
``instance/config.py`` and environment variables apply exactly as they do for the server.
"""

from __future__ import annotations

import sys


def main(names: list[str]) -> int:
    """Build the app (no connections are opened) and print the requested settings."""
    from webapp import create_app

    config = create_app().config
    for name in names:
        print(f"{name}={config[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
