"""Load generator for bench_similar.py, run as a separate process.

Reads request paths from stdin, sends them to 127.0.0.1:PORT with CONCURRENCY keep-alive
clients (with the Cookie header given as an optional third argument), prints JSON
{latencies_ms, errors, first_error}.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time


def main() -> None:
    port, concurrency = int(sys.argv[1]), int(sys.argv[2])
    headers = {"Cookie": sys.argv[3]} if len(sys.argv) > 3 else {}
    paths = [line.strip() for line in sys.stdin if line.strip()]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    cursor = iter(range(len(paths)))

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                break
            t0 = time.perf_counter()
            for attempt in range(50 if i < concurrency else 1):
                try:
                    conn.request("GET", paths[i], headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                    break
                except OSError as exc:  # server still starting: retry the first requests only
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    if attempt == 49 or i >= concurrency:
                        with lock:
                            errors.append(f"{paths[i]}: {exc}")
                        resp = None
                        break
                    time.sleep(0.2)
                    t0 = time.perf_counter()
            elapsed = (time.perf_counter() - t0) * 1000
            with lock:
                if resp is not None and resp.status >= 400:
                    errors.append(f"{paths[i]}: HTTP {resp.status}")
                elif resp is not None:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    json.dump(
        {
            "latencies_ms": latencies,
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
