"""One card per picture: search results whose photos are the same picture collapse.

The catalogue lists some photos under several products (the reference catalogue has 651
groups of byte-identical photos, and more re-encoded or rescaled copies). Shown as they
rank, they fill a results page with one picture several times over. Two results are the
same picture when their photos are byte-identical (``Product.image_sha256``) or their
perceptual hashes (``ProductImageHash``, kept by the duplicate checks) differ by at most
``DUPLICATE_HASH_DISTANCE`` bits, the rule the admin's duplicate check uses; the best-ranked
of a group is shown and the others are "also listed as" links on its card.

One query over the results' own rows (at most a few dozen), so it costs a millisecond.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flask import current_app
from sqlalchemy import select

from webapp.extensions import db
from webapp.inventory import perceptual
from webapp.inventory.duplicates import CURRENT_HASH
from webapp.models import Product, ProductImageHash


def same_picture_groups(ids: Sequence[int]) -> list[list[int]]:
    """``ids`` (best first) in groups of the same picture, each in rank order, the groups in
    the order of their best member; a product without a photo is a group of its own."""
    ids = [int(i) for i in ids]
    if not ids:
        return []
    rows = db.session.execute(
        select(Product.id, Product.image_sha256, ProductImageHash.phash)
        .outerjoin(ProductImageHash, CURRENT_HASH)
        .where(Product.id.in_(ids))
    ).all()
    sha = {pid: s for pid, s, _ in rows if s}
    phash = {pid: h for pid, _, h in rows if h}
    leader = list(range(len(ids)))  # union-find over positions; a group's root is its best

    def root(i: int) -> int:
        while leader[i] != i:
            leader[i] = leader[leader[i]]
            i = leader[i]
        return i

    def join(a: int, b: int) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            leader[max(ra, rb)] = min(ra, rb)

    first_of: dict[str, int] = {}
    for pos, pid in enumerate(ids):
        if pid in sha:
            join(first_of.setdefault(sha[pid], pos), pos)
    hashed = [pos for pos, pid in enumerate(ids) if pid in phash]
    if len(hashed) > 1:
        hashes = perceptual.to_array(phash[ids[pos]] for pos in hashed)
        close = perceptual.distances(hashes, hashes) <= int(
            current_app.config["DUPLICATE_HASH_DISTANCE"]
        )
        for a, b in zip(*np.nonzero(np.triu(close, k=1)), strict=True):
            join(hashed[a], hashed[b])
    groups: dict[int, list[int]] = {}
    for pos, pid in enumerate(ids):
        groups.setdefault(root(pos), []).append(pid)
    return [groups[r] for r in sorted(groups)]
