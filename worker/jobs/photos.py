"""Catalogue photos into a per-photo store: read each photo, compute its row, write chunk by
chunk (each chunk one atomic store part, so a killed run keeps what it wrote).

Embeddings, the tuning's feature maps and its colour descriptors are all filled this way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from flask import current_app

from ml.preprocess import load_image
from ml.store import EmbeddingStore


def read_photo(path: str | os.PathLike | None) -> Any:
    """Decode a photo for a backbone (RGB, orientation applied)."""
    if path is None:
        raise ValueError("no photo path")
    return load_image(path)


def embed_with(backbone: Any) -> Callable[[list[Any]], np.ndarray]:
    """A backbone's ``embed`` at the configured batch size."""
    batch_size = current_app.config["EMBEDDING_BATCH_SIZE"]
    return lambda images: backbone.embed(images, batch_size=batch_size)


def embed_photos(
    store: EmbeddingStore,
    compute: Callable[[list[Any]], np.ndarray],
    todo: Sequence[tuple[int, str | os.PathLike | None, str]],
    *,
    chunk: int,
    after_chunk: Callable[[int], None] | None = None,
) -> tuple[list[int], list[tuple[int, str]]]:
    """Compute and store the rows of ``(product id, photo file, image key)`` entries chunk by
    chunk; ``compute(images)`` gives one row per image (a backbone's embedding, feature maps,
    colour descriptors).
    Returns the ids written and the ``(id, reason)`` of photos that could not be read;
    ``after_chunk(entries done)`` follows every chunk."""
    written: list[int] = []
    skipped: list[tuple[int, str]] = []
    for start in range(0, len(todo), chunk):
        ids, keys, images = [], [], []
        for product_id, path, key in todo[start : start + chunk]:
            try:
                images.append(read_photo(path))
            except (OSError, ValueError) as exc:
                skipped.append((product_id, f"unreadable photo {path}: {exc}"))
                continue
            ids.append(product_id)
            keys.append(key)
        if ids:
            store.write_part(ids, compute(images), keys=keys)
            written.extend(ids)
        if after_chunk:
            after_chunk(min(start + chunk, len(todo)))
    return written, skipped
