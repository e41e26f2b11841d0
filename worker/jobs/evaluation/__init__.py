"""Evaluation runs for ``flask model evaluate`` (worker side; the Quality page only reads
what they store).

Loads a model's stored embeddings and the catalogue's labels, builds each evaluated model's
vectors (``plain``: the backbone embedding; ``colour``: fused with the colour descriptor;
``projection``: projections trained on the frozen embedding; ``tuned``: the catalogue-tuned
backbone), ranks the queries the way a product page or a photo search does, scores the
rankings (``ml.evaluation``) and stores the result as JSON beside the model's embeddings.

Entry points: ``resolve_model_and_network(name)``, ``Options``, ``run(opts, say)``,
``save_result(result, extra_path, store)``; ``EvaluationError`` for a run that cannot go.
"""

from __future__ import annotations

from worker.jobs.evaluation.catalogue import resolve_model_and_network
from worker.jobs.evaluation.options import (
    HEAD_DESCRIPTIONS,
    HEADS,
    PROTOCOLS,
    EvaluationError,
    Options,
)
from worker.jobs.evaluation.report import save_result
from worker.jobs.evaluation.runs import run

__all__ = [
    "HEADS",
    "HEAD_DESCRIPTIONS",
    "PROTOCOLS",
    "EvaluationError",
    "Options",
    "resolve_model_and_network",
    "run",
    "save_result",
]
