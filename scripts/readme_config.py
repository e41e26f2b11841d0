"""Regenerate README.md's configuration table from webapp/config.py (``make readme-config``).

The table sits between ``<!-- config-table:start -->`` and ``<!-- config-table:end -->``.
With ``--check`` nothing is written and the exit code says whether the table is current.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START = "<!-- config-table:start -->"
END = "<!-- config-table:end -->"


def render(text: str, table: str) -> str:
    """Return ``text`` with the part between the markers replaced by ``table``."""
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"README.md has no {START} ... {END} markers")
    return pattern.sub(lambda _: f"{START}\n{table}\n{END}", text, count=1)


def main(argv: list[str] | None = None) -> int:
    """Write the fresh table into README.md, or with --check only compare."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    args = parser.parse_args(argv)

    from webapp.config import markdown_table  # the same text `flask --app wsgi config table` prints

    text = README.read_text(encoding="utf-8")
    fresh = render(text, markdown_table())
    if args.check:
        if fresh != text:
            print("README.md's configuration table is out of date: run `make readme-config`.")
            return 1
        print("README.md's configuration table is current.")
        return 0
    if fresh != text:
        README.write_text(fresh, encoding="utf-8")
        print("README.md: configuration table updated.")
    else:
        print("README.md: configuration table already current.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
