"""The model registry (``ml.registry``) bound to the app's settings.

Each function reads ``MODEL_FOLDER`` and the ``EMBEDDING_*`` settings from the current app
and calls the Flask-free function of the same name. Building a backbone needs TensorFlow,
so only the worker and the command line call ``load_backbone`` and ``backbone_for``; pages
only look at stores, folders and the neighbour lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import current_app

from ml import registry
from ml.cache import NeighbourCache
from ml.registry import ModelUnavailable, image_key
from ml.store import EmbeddingStore
from webapp.extensions import get_redis

__all__ = [
    "ModelUnavailable",
    "allowed_model_ids",
    "backbone_for",
    "backbone_settings",
    "image_key",
    "load_backbone",
    "neighbour_cache",
    "network_folder",
    "newest_network",
    "store_for",
]


def backbone_settings() -> registry.BackboneSettings:
    """The configured backbone, as plain settings."""
    cfg = current_app.config
    return registry.BackboneSettings(
        name=cfg["EMBEDDING_BACKBONE"],
        input_size=cfg["EMBEDDING_INPUT_SIZE"] or None,
        pooling=cfg["EMBEDDING_POOLING"],
        resnet_weights=cfg["RESNET50_WEIGHTS"],
        model_folder=cfg["MODEL_FOLDER"],
        tuned=str(cfg["EMBEDDING_TUNED"]),
        runtime=str(cfg["INFERENCE_RUNTIME"]),
        threads=int(cfg["INFERENCE_THREADS"]),
    )


def load_backbone(tuned: bool = True) -> Any:
    """The configured embedder (tuned as ``EMBEDDING_TUNED`` says unless ``tuned=False``)."""
    return registry.load_backbone(backbone_settings(), tuned=tuned)


def backbone_for(model_id: str) -> Any:
    """The embedder whose vectors carry ``model_id``; raises ``ModelUnavailable``."""
    return registry.backbone_for(model_id, backbone_settings())


def store_for(model_id: str) -> EmbeddingStore:
    """The embedding store of a model id under the configured model folder."""
    return registry.store_for(current_app.config["MODEL_FOLDER"], model_id)


def index_folder(model_id: str) -> Path:
    """Where a model's saved vector index lives: ``<MODEL_FOLDER>/<model id>/index``."""
    return registry.index_folder(current_app.config["MODEL_FOLDER"], model_id)


def network_folder(model_id: str) -> Path:
    """Where a tuned network's weights live: ``<MODEL_FOLDER>/<model id>/network``."""
    return registry.network_folder(current_app.config["MODEL_FOLDER"], model_id)


def newest_network(base_id: str) -> Path | None:
    """The folder of the newest network tuned from ``base_id``, or None."""
    return registry.newest_network(current_app.config["MODEL_FOLDER"], base_id)


def neighbour_cache() -> NeighbourCache:
    """The Redis neighbour lists."""
    return NeighbourCache(get_redis())


def allowed_model_ids() -> list[str]:
    """The model ids a request may name: the served one (whose lists pages show) and those
    an admin enabled in ``COMPARE_MODELS``. Building a model costs a worker seconds and
    tens of MB for good, so no other id that arrives from outside is ever built."""
    ids = [str(model_id) for model_id in current_app.config.get("COMPARE_MODELS") or ()]
    served = neighbour_cache().active_model()
    return list(dict.fromkeys([served, *ids] if served else ids))
