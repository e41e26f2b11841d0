"""A bulk import's report: skipped rows, ignored files and suspected duplicates.

Each part of the report is replaced as a whole when its stage runs again, so a resumed job
reports every row once. The import stage lists exact and perceptual duplicates (hashes);
the index stage adds near duplicates by embedding cosine above the model's duplicate
threshold (:func:`similar_matches`).
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import delete, func, select

from webapp import registry
from webapp.catalog.importer import ImportResult
from webapp.extensions import db
from webapp.inventory import duplicates
from webapp.inventory.safety import ZipPlan
from webapp.models import ImportJobRow
from webapp.thresholds import duplicate_threshold

# (other product id, how: exact | perceptual | similar, score, detail) per product.
Matches = dict[int, list[tuple[int, str, float, str]]]


def replace_rows(
    job_id: int,
    kinds: tuple[str, ...],
    rows: list[ImportJobRow],
    match: tuple[str, ...] | None = None,
) -> None:
    """Swap one part of the report for a freshly computed one (idempotent on re-runs)."""
    stmt = delete(ImportJobRow).where(ImportJobRow.job_id == job_id, ImportJobRow.kind.in_(kinds))
    if match is not None:
        stmt = stmt.where(ImportJobRow.match.in_(match))
    db.session.execute(stmt)
    db.session.add_all(rows)


def duplicate_rows(job_id: int, matches: Matches, line_of: dict[int, int]) -> list[ImportJobRow]:
    """Report rows for suspected duplicates, each with the line of its row in styles.csv."""
    return [
        ImportJobRow(
            job_id=job_id,
            kind="duplicate",
            line=line_of.get(pid),
            product_id=str(pid),
            match=how,
            duplicate_of=other,
            score=round(score, 4),
            reason=f"possible duplicate of product {other}: {detail}"[:1000],
        )
        for pid, found in matches.items()
        for other, how, score, detail in found
    ]


def count_duplicates(job_id: int) -> int:
    """Products of this job with at least one suspected duplicate."""
    return int(
        db.session.scalar(
            select(func.count(func.distinct(ImportJobRow.product_id))).where(
                ImportJobRow.job_id == job_id, ImportJobRow.kind == "duplicate"
            )
        )
        or 0
    )


def report_skips(
    job_id: int,
    result: ImportResult,
    plan: ZipPlan,
    damaged: list[tuple[str, str]],
    row_ids: list[int],
) -> None:
    """The report's skipped rows and ignored files (stray, damaged or unmatched photos)."""
    ignored = [*plan.ignored, *damaged]
    listed = set(row_ids)
    ignored += [
        (name, "no row in styles.csv has this id")
        for pid, name in sorted(plan.photos.items())
        if pid not in listed and not any(s.product_id == str(pid) for s in result.skipped)
    ]
    report = [
        ImportJobRow(
            job_id=job_id,
            kind="skipped",
            line=s.line,
            product_id=s.product_id[:40],
            reason=s.reason[:1000],
        )
        for s in result.skipped
    ]
    report += [
        ImportJobRow(job_id=job_id, kind="ignored", reason=f"{name}: {why}"[:1000])
        for name, why in ignored
    ]
    replace_rows(job_id, ("skipped", "ignored"), report)
    db.session.commit()


def similar_matches(model_id: str, product_ids: list[int], job_id: int) -> Matches:
    """Near duplicates by embedding cosine over the model's whole store, leaving out pairs
    this job's report already lists (identical bytes or the same picture)."""
    if not product_ids:
        return {}
    threshold, _source = duplicate_threshold(model_id)
    ids, vectors = registry.store_for(model_id).load()
    vectors = np.asarray(vectors, np.float32)
    listed = {
        (int(r.product_id), r.duplicate_of)
        for r in db.session.scalars(
            select(ImportJobRow).where(
                ImportJobRow.job_id == job_id, ImportJobRow.kind == "duplicate"
            )
        )
    }
    rows = np.flatnonzero(np.isin(ids, np.asarray(product_ids, np.int64)))
    found: Matches = {}
    for start in range(0, len(rows), 512):
        block = rows[start : start + 512]
        sims = vectors[block] @ vectors.T
        sims[np.arange(len(block)), block] = -np.inf
        for i, row in enumerate(block.tolist()):
            pid = int(ids[row])
            cols = np.flatnonzero(sims[i] >= threshold)
            best = cols[np.argsort(-sims[i, cols])][: duplicates.MAX_MATCHES]
            hits = [
                (
                    int(ids[c]),
                    "similar",
                    float(sims[i, c]),
                    f"looks alike (cosine {sims[i, c]:.3f})",
                )
                for c in best.tolist()
                if (pid, int(ids[c])) not in listed
            ]
            if hits:
                found[pid] = hits
    return found
