"""Grow the real catalogue to N products for scale benchmarks (no photo is embedded).

Vectors: every real product keeps its served-model vector; each synthetic product is a real
product's vector (drawn at random) plus a perturbation, re-normalised. The perturbation lives
in a random subspace of the catalogue's own variation: for each synthetic product, 16 of the
real embeddings' top 64 principal directions are drawn at random, each weighted by a normal
draw times that direction's spread, and the whole is scaled by one factor ``sigma``. Sigma
is chosen by bisection so that the median of each product's top-10 cosine (the cosine of its
10th nearest other product) over the synthetic catalogue equals the real catalogue's; the
quantiles of both distributions (and of the top-1 cosine) are printed side by side.
N at or below the real count takes that many real products (all of them at the real count).

The vectors are written as an ``EmbeddingStore`` under ``OUT/models`` for the model id
``synthetic-<n>-s<seed>-<source model id>``; ``OUT/catalogue-<n>-s<seed>.json`` describes it
(sigma, the quantiles) and makes a second run with the same arguments reuse it.

Database rows (``--database-url``, PostgreSQL): the real rows are copied into the schema
``--schema`` (default ``bench_scale``; its missing tables are created; ``public`` only in a
database other than the test suite's ``test``; ``bench/bench_scale.py`` uses a database of
its own, migrated, so pages find every table), and each synthetic product gets a new id
(above the real ids) with the attributes of its source product (its name marked with the
synthetic id) and its photo path, so photos point at existing files. Rows are written with
PostgreSQL's COPY; ids already present are left as they are, so a second run only adds what
is missing.

Usage: PYTHONPATH=. .venv/bin/python bench/make_large_catalogue.py --n 200000 --out /tmp/shop-scale
       [--seed 0] [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
       [--source-folder instance/models] [--source-model efficientnet_lite0-57934424-160-avg]
       [--source-database sqlite:///instance/shop.sqlite3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ml.neighbours import top_k_rows  # noqa: E402
from ml.store import MODEL_ID_RE, EmbeddingStore  # noqa: E402

SOURCE_MODEL = "efficientnet_lite0-57934424-160-avg"
PRINCIPAL_DIRECTIONS = 64
DIRECTIONS_PER_PRODUCT = 16
CALIBRATION_QUERIES = 1000
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
TOP = 10


def model_id_for(n: int, seed: int, source_model: str) -> str:
    model_id = f"synthetic-{n}-s{seed}-{source_model}"
    if not MODEL_ID_RE.match(model_id):
        raise ValueError(f"model id {model_id!r} breaks the store's naming rule")
    return model_id


def top_cosines(vectors: np.ndarray, queries: np.ndarray, k: int = TOP) -> np.ndarray:
    """Each query row's k best cosines among ``vectors`` other than itself ([q, k], best
    first); ``queries`` are row positions in ``vectors``."""
    out = np.empty((len(queries), k), np.float32)
    for q0 in range(0, len(queries), 256):
        rows = queries[q0 : q0 + 256]
        sims = vectors[rows] @ vectors.T
        sims[np.arange(len(rows)), rows] = -np.inf
        _, scores = top_k_rows(sims, k)
        out[q0 : q0 + len(rows)] = scores
    return out


def _quantiles(values: np.ndarray) -> list[float]:
    return [float(x) for x in np.quantile(values, QUANTILES)]


def principal_directions(vectors: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``count`` principal directions of the rows ([d, count]) and their spreads."""
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    cov = (centred.T @ centred) / len(vectors)
    values, vecs = np.linalg.eigh(cov.astype(np.float64))
    order = np.argsort(values)[::-1][:count]
    return vecs[:, order].astype(np.float32), np.sqrt(np.maximum(values[order], 0)).astype(
        np.float32
    )


def synthesise(
    real: np.ndarray, n: int, rng: np.random.Generator, log=print
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(vectors [n, d] float32 unit rows: the real ones first, source row of each synthetic
    row, description with sigma and the quantiles)."""
    n0, d = real.shape
    m = n - n0
    sources = rng.integers(0, n0, size=m)
    basis, spread = principal_directions(real, PRINCIPAL_DIRECTIONS)
    weights = rng.standard_normal((m, PRINCIPAL_DIRECTIONS)).astype(np.float32) * spread
    for start in range(0, m, 65536):  # keep 16 random directions of the 64 per product
        block = weights[start : start + 65536]
        keys = rng.random(block.shape)
        drop = np.argsort(keys, axis=1)[:, DIRECTIONS_PER_PRODUCT:]
        np.put_along_axis(block, drop, 0.0, axis=1)
    # The perturbations are made block by block (weights @ basis.T), never all at once: at a
    # million products of 1,280 floats they alone would take 5 GB.
    out = np.empty((n, d), np.float32)
    out[:n0] = real

    def fill(sigma: float) -> None:
        for start in range(0, m, 65536):
            stop = min(start + 65536, m)
            rows = real[sources[start:stop]] + sigma * (weights[start:stop] @ basis.T)
            rows /= np.linalg.norm(rows, axis=1, keepdims=True)
            out[n0 + start : n0 + stop] = rows

    real_q = rng.choice(n0, size=min(CALIBRATION_QUERIES, n0), replace=False)
    real_top = top_cosines(real, real_q)
    target = float(np.median(real_top[:, TOP - 1]))
    syn_q = rng.choice(n, size=min(CALIBRATION_QUERIES, n), replace=False)
    # Bisection on log(sigma): a larger perturbation lowers the synthetic top-10 cosines.
    lo, hi = np.log(0.05), np.log(20.0)
    for step in range(10):
        sigma = float(np.exp((lo + hi) / 2))
        fill(sigma)
        median = float(np.median(top_cosines(out, syn_q)[:, TOP - 1]))
        log(
            f"  calibration {step + 1:2d}: sigma {sigma:.4f} -> median top-10 cosine {median:.4f} (real {target:.4f})"
        )
        if abs(median - target) < 0.001:
            break
        if median > target:
            lo = np.log(sigma)
        else:
            hi = np.log(sigma)
    syn_top = top_cosines(out, syn_q)
    description = {
        "sigma": sigma,
        "quantiles": list(QUANTILES),
        "real_top10": _quantiles(real_top[:, TOP - 1]),
        "synthetic_top10": _quantiles(syn_top[:, TOP - 1]),
        "real_top1": _quantiles(real_top[:, 0]),
        "synthetic_top1": _quantiles(syn_top[:, 0]),
    }
    return out, sources, description


def print_distributions(description: dict, log=print) -> None:
    log("  top-k cosine quantiles          real    synthetic")
    for name in ("top10", "top1"):
        for q, a, b in zip(
            description["quantiles"],
            description[f"real_{name}"],
            description[f"synthetic_{name}"],
            strict=True,
        ):
            log(f"  {name:>6} q{q:<4}                 {a:.4f}    {b:.4f}")


def make_catalogue(
    n: int,
    out: str | Path,
    *,
    seed: int = 0,
    source_folder: str | Path = ROOT / "instance" / "models",
    source_model: str = SOURCE_MODEL,
    database_url: str | None = None,
    source_database: str | None = None,
    schema: str = "bench_scale",
    log=print,
) -> dict:
    """Make (or reuse) the synthetic catalogue; returns its description (``model_id`` and
    ``model_folder`` among it)."""
    if n < 2:
        raise ValueError(f"--n must be at least 2, got {n}")
    out = Path(out)
    model_folder = out / "models"
    model_id = model_id_for(n, seed, source_model)
    described = out / f"catalogue-{n}-s{seed}.json"
    store = EmbeddingStore(model_folder, model_id)
    if described.exists() and store.id_count() == n:
        description = json.loads(described.read_text())
        log(f"reusing {n:,} products: {model_folder / model_id}")
    else:
        t0 = time.perf_counter()
        real_ids, real_vectors = EmbeddingStore(source_folder, source_model).load()
        if not len(real_ids):
            raise ValueError(f"no embeddings of {source_model} under {source_folder}")
        real_vectors = np.asarray(real_vectors, np.float32)
        norms = np.linalg.norm(real_vectors, axis=1)
        if np.abs(norms - 1).max() > 1e-3:
            raise ValueError(
                f"{source_model}'s embeddings are not unit rows ({norms.min()}..{norms.max()})"
            )
        rng = np.random.default_rng(seed)
        n0 = len(real_ids)
        description: dict = {"n": n, "seed": seed, "source_model": source_model, "real": n0}
        if n <= n0:
            keep = np.arange(n0) if n == n0 else np.sort(rng.choice(n0, size=n, replace=False))
            ids, vectors, sources = real_ids[keep], real_vectors[keep], keep
            description["sigma"] = None
            log(f"{n:,} real products of {n0:,} (no synthesis)")
        else:
            log(
                f"synthesising {n - n0:,} products from {n0:,} real ones ({real_vectors.shape[1]} dims)"
            )
            vectors, src, found = synthesise(real_vectors, n, rng, log)
            description.update(found)
            new_ids = int(real_ids.max()) + 1 + np.arange(n - n0, dtype=np.int64)
            ids = np.concatenate([real_ids, new_ids])
            sources = np.concatenate([np.arange(n0), src])
        keys = [f"synthetic:{int(real_ids[s])}" for s in sources]
        if store.path.exists():  # a partial earlier run: start the store again
            import shutil

            shutil.rmtree(store.path)
        store = EmbeddingStore(model_folder, model_id)
        store.write_part(ids, vectors, keys)
        del vectors  # compaction reads the part back: one copy of the vectors at a time
        store.compact()
        np.save(out / f"sources-{n}-s{seed}.npy", real_ids[sources])
        description.update(model_id=model_id, model_folder=str(model_folder))
        description["seconds"] = round(time.perf_counter() - t0, 1)
        described.write_text(json.dumps(description, indent=1))
        log(f"wrote {n:,} vectors in {description['seconds']}s: {store.path}")
    if description.get("sigma") is not None:
        log(f"  perturbation scale sigma {description['sigma']:.4f}")
        print_distributions(description, log)
    if database_url:
        description["database_rows"] = write_rows(
            out, n, seed, database_url, source_database, schema, log
        )
    return description


def write_rows(
    out: Path,
    n: int,
    seed: int,
    database_url: str,
    source_database: str | None,
    schema: str,
    log=print,
) -> int:
    """Copy the real rows and add the synthetic ones in ``schema`` (PostgreSQL COPY); returns
    the row count. The ``public`` schema is refused in the test suite's database ``test``."""
    import psycopg
    from sqlalchemy import create_engine, select, text
    from sqlalchemy.engine import make_url

    from webapp.extensions import db
    from webapp.models import Product

    if not database_url.startswith("postgresql"):
        raise ValueError("--database-url must be a PostgreSQL URL (postgresql+psycopg://...)")
    url = make_url(database_url)
    if not schema.isidentifier() or (schema == "public" and url.database == "test"):
        raise ValueError(f"--schema must be a plain name, not public in database test: {schema!r}")
    description = json.loads((out / f"catalogue-{n}-s{seed}.json").read_text())
    ids = EmbeddingStore(out / "models", model_id_for(n, seed, description["source_model"])).ids()
    sources = np.load(out / f"sources-{n}-s{seed}.npy")
    source = create_engine(source_database or f"sqlite:///{ROOT / 'instance' / 'shop.sqlite3'}")
    table = Product.__table__
    with source.connect() as conn:
        rows = {r.id: dict(r._mapping) for r in conn.execute(select(table))}
    target = create_engine(database_url, connect_args={"options": f"-csearch_path={schema}"})
    with target.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    db.metadata.create_all(target, tables=[table])  # the shop's schema where it is missing
    with target.connect() as conn:
        present = {int(r[0]) for r in conn.execute(select(table.c.id))}
    todo = [
        (int(i), int(s))
        for i, s in zip(ids.tolist(), sources.tolist(), strict=True)
        if int(i) not in present and int(s) in rows
    ]
    columns = [c.key for c in table.columns]
    t0 = time.perf_counter()
    plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, options=f"-csearch_path={schema}") as conn:
        with conn.cursor().copy(f"COPY product ({', '.join(columns)}) FROM STDIN") as copy:
            for pid, src in todo:
                row = dict(rows[src])
                if pid != src:
                    row["name"] = f"{row['name']} #{pid}"[:300]
                row["id"] = pid
                copy.write_row([row[c] for c in columns])
        conn.execute("ANALYZE product")
    log(
        f"database rows in schema {schema}: {len(present):,} present, {len(todo):,} added "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    return len(present) + len(todo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--database-url")
    parser.add_argument(
        "--source-database", help="where the real rows are (default: instance SQLite)"
    )
    parser.add_argument("--schema", default="bench_scale")
    parser.add_argument("--source-folder", default=str(ROOT / "instance" / "models"))
    parser.add_argument("--source-model", default=SOURCE_MODEL)
    args = parser.parse_args()
    make_catalogue(
        args.n,
        args.out,
        seed=args.seed,
        source_folder=args.source_folder,
        source_model=args.source_model,
        database_url=args.database_url,
        source_database=args.source_database,
        schema=args.schema,
    )


if __name__ == "__main__":
    main()
