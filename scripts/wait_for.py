"""Wait until a service answers: ``wait_for.py redis|postgres|http URL [--timeout SECONDS]``.

Exits 0 as soon as the service answers, 1 when it has not answered within the timeout.
Used by ``make run``, ``make test`` and ``.ci/run``; runs in the project's virtualenv.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request


def redis_answers(url: str) -> None:
    """Raise unless Redis at ``url`` answers PING."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


def postgres_answers(url: str) -> None:
    """Raise unless PostgreSQL at ``url`` accepts a connection and a query."""
    import psycopg

    # SQLAlchemy URLs name the driver (postgresql+psycopg://); libpq wants the plain scheme.
    url = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url, connect_timeout=2) as conn:
        conn.execute("SELECT 1")


def http_answers(url: str) -> None:
    """Raise unless ``url`` answers an HTTP request below status 500."""
    try:
        with urllib.request.urlopen(url, timeout=10):
            pass
    except urllib.error.HTTPError as exc:  # a 4xx page still proves the server is up
        if exc.code >= 500:
            raise


CHECKS = {"redis": redis_answers, "postgres": postgres_answers, "http": http_answers}


def main(argv: list[str] | None = None) -> int:
    """Poll the service until it answers or the timeout passes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(CHECKS))
    parser.add_argument("url")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    args = parser.parse_args(argv)

    check = CHECKS[args.kind]
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            check(args.url)
            return 0
        except Exception as exc:  # any failure means "not yet"
            last = exc
        if time.monotonic() >= deadline:
            print(f"{args.kind} at {args.url} did not answer: {last}", file=sys.stderr)
            return 1
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
