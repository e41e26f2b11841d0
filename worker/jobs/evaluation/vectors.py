"""Each evaluated model's vectors for the index rows and the queries: the plain embedding,
fused with the colour descriptor, projected, or from the tuned backbone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from flask import current_app

from ml.colour import fuse
from ml.projection import FusionWeights
from worker.jobs.evaluation.artefacts import trained_projection, type_to_sub
from worker.jobs.evaluation.catalogue import Catalogue
from worker.jobs.evaluation.options import HEADS, EvaluationError, Options, Say
from worker.jobs.evaluation.tuned import tuned_network


@dataclass
class Queries:
    """The query photos of a run: base embeddings, colour descriptors, and either their
    catalogue rows (held out) or the photos themselves (a query folder)."""

    vectors: np.ndarray
    colours: np.ndarray | None
    rows: np.ndarray | None = None
    images: list | None = None


@dataclass
class Built:
    """One evaluated model's vectors for the index rows and the query rows."""

    head: str
    model_id: str
    index: np.ndarray
    queries: np.ndarray
    projection: Any = None
    projected_queries: dict | None = None
    headset: Any = None  # the model's own photo-search heads (a tuned backbone has them)
    embedder: Any = None  # what embeds an uploaded photo, when not the base backbone


def build_model(
    head: str,
    cat: Catalogue,
    colours: np.ndarray,
    index_rows: np.ndarray,
    queries: Queries,
    train_rows: np.ndarray,
    opts: Options,
    say: Say | None,
) -> Built:
    """Vectors of one evaluated model for the index rows and the queries."""
    if head == "plain":
        return Built(head, cat.model_id, cat.vectors[index_rows], queries.vectors)
    if head == "colour":
        w = opts.colour_weight
        return Built(
            head,
            f"{cat.model_id}.colour{round(100 * w)}",
            fuse(cat.vectors[index_rows], colours[index_rows], w),
            fuse(queries.vectors, queries.colours, w),
        )
    if head == "projection":
        return _projected(cat, colours, index_rows, queries, train_rows, opts, say)
    if head == "tuned":
        return _tuned(cat, colours, index_rows, queries, train_rows, opts, say)
    raise EvaluationError(f"unknown head {head!r}; choose from {', '.join(HEADS)}")


def _projected(cat, colours, index_rows, queries, train_rows, opts, say) -> Built:
    """The projection trained on the kept rows, fused with the embedding and the colour."""
    projection = trained_projection(cat, colours, train_rows, retrain=opts.retrain, say=say)
    weights = FusionWeights()
    return Built(
        "projection",
        f"{cat.model_id}.proj{projection.digest}.{weights.tag()}",
        projection.retrieval_vectors(cat.vectors[index_rows], colours[index_rows], weights),
        projection.retrieval_vectors(queries.vectors, queries.colours, weights),
        projection=projection,
        projected_queries=projection.transform(queries.vectors, queries.colours),
    )


def _tuned(cat, colours, index_rows, queries, train_rows, opts, say) -> Built:
    """The tuned backbone's embedding of the index rows and the queries, with its heads."""
    embedder, vectors, query_tuned = tuned_network(
        cat, colours, train_rows, opts, say, query_rows=queries.rows
    )
    network = embedder.network
    # Held-out catalogue rows come embedded from their stored maps, as uploads are embedded.
    if query_tuned is None:
        if queries.images:
            if say:
                say(f"Embedding {len(queries.images)} query photos with {network.model_id}...")
            query_tuned = embedder.embed_query(
                queries.images, batch_size=current_app.config["EMBEDDING_BATCH_SIZE"]
            )
        else:
            query_tuned = np.empty((0, vectors.shape[1]), np.float32)
    return Built(
        "tuned",
        network.model_id,
        vectors[index_rows],
        query_tuned,
        headset=network.headset(type_to_sub(cat.labels.take(train_rows))),
        embedder=embedder,
    )
