"""What one evaluation run does: its options, the evaluated models' names, its errors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flask import current_app

from ml import evaluation as ev

HEADS = ("plain", "colour", "projection", "tuned")
HEAD_DESCRIPTIONS = {
    "plain": "backbone embedding, cosine",
    "colour": "backbone embedding + colour descriptor (weighted)",
    "projection": "projections trained on the frozen embedding (type + colour) + embedding + "
    "colour descriptor",
    "tuned": "catalogue-tuned backbone: its features, type and colour predictions, colour "
    "descriptor",
}

# ``Options.protocol``: the published protocol on this dataset (uditarora/fashion-product-
# classification, RESULTS.md): train on the even years, test on the odd ones, top-1
# articleType on the 20 most common types, 82.08 % (a later commit of it: 87.01 %) with a
# fully fine-tuned ResNet50.
YEAR_SPLIT = "year-split"
PROTOCOLS = (YEAR_SPLIT,)
PROTOCOL_TOP_TYPES = 20
PUBLISHED_TOP_TYPES = {"ResNet50, fully fine-tuned (published)": 0.8208, "its later commit": 0.8701}

Say = Callable[[str], None]
# ``Options.wild`` for wild photos made here (ml.wild), seeded by the run's seed and each
# product's id.
WILD_GENERATED = "generated"


class EvaluationError(Exception):
    """An evaluation that cannot run (nothing embedded, bad query folder...)."""


@dataclass
class Options:
    """What one evaluation run does."""

    model_id: str
    heads: tuple[str, ...] = ("plain",)
    k: int = 10
    min_type_count: int = ev.REFERENCE_MIN_TYPE_COUNT
    split: float | None = None
    seed: int = 0
    queries: str | None = None
    colour_weight: float = 0.3
    classifier: str = "heads"  # heads | projection | ensemble: which classifier narrows searches
    colour_first: bool | None = None  # photo searches: the predicted colour first within the
    # type (None: as the shop is configured, SEARCH_COLOUR_FIRST)
    latency_sample: int = 50
    retrain: bool = False
    network: str | None = None  # the tuned model id leave-one-out serves (None: the newest)
    wild: str | None = None  # held-out runs: also search wild photos of the held-out products,
    # WILD_GENERATED or a folder of them (images/<id>.jpg)
    foreground: bool = True  # wild photos: prepared as photo search prepares an upload
    compact: int = 0  # photo searches rank with vectors projected to this many dims (0: full)
    protocol: str | None = None  # PROTOCOLS: a published split instead of --split's draw

    @property
    def searches_photos(self) -> bool:
        """Whether the queries are searched as uploaded photos (a split, a protocol or a
        query folder), not ranked as product pages are (leave-one-out)."""
        return bool(self.split or self.queries or self.protocol)


def colour_first(opts: Options) -> bool:
    """Whether photo searches put the predicted colour first: the option, else the shop's."""
    if opts.colour_first is not None:
        return opts.colour_first
    return bool(current_app.config["SEARCH_COLOUR_FIRST"])
