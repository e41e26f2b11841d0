"""Model ids and what they name: the embedder for an id, its store, its tuned network.

A model id says everything needed to rebuild the embedder that wrote a vector:
``<backbone>-<weights digest>-<input size>-<pooling>``, plus ``.ft<digest>`` for a network
tuned on the catalogue. Everything a model id owns lives under ``<model folder>/<model id>/``
(the embedding store, ``network/`` for a tuned network, the photo-search heads).

Flask-free: callers pass plain :class:`BackboneSettings` and folders. Tuned networks are
loaded once per process (and again when their folder is rewritten).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml import runtime
from ml.backbones import BACKBONE_NAMES, get_backbone
from ml.store import EmbeddingStore
from ml.tuned.config import TUNED_MARK, base_model_id, is_tuned_id
from ml.tuned.network import TunedNetwork

logger = logging.getLogger(__name__)

__all__ = [
    "BackboneSettings",
    "ModelUnavailable",
    "backbone_for",
    "base_model_id",
    "image_key",
    "index_folder",
    "is_tuned_id",
    "load_backbone",
    "network_folder",
    "newest_network",
    "store_for",
]


class ModelUnavailable(ValueError):
    """A model id this install cannot run (unknown backbone, missing weights or network)."""


@dataclass(frozen=True)
class BackboneSettings:
    """The configured backbone: what ``get_backbone`` needs, where models live, and the
    ``EMBEDDING_TUNED`` choice (``auto``, ``off`` or a tuned model id)."""

    name: str
    input_size: int | None
    pooling: str
    resnet_weights: str
    model_folder: str | os.PathLike
    tuned: str = "auto"
    runtime: str = runtime.DEFAULT_RUNTIME
    threads: int = 0


def load_backbone(settings: BackboneSettings, tuned: bool = True) -> Any:
    """The configured embedder: the catalogue-tuned backbone ``settings.tuned`` selects
    (``auto``: the newest one tuned for the configured backbone), else the plain backbone.
    ``tuned=False`` always gives the plain one. Built once per process."""
    runtime.select(settings.runtime, settings.threads)
    base = get_backbone(
        settings.name,
        input_size=settings.input_size or None,
        pooling=settings.pooling,
        resnet_weights=settings.resnet_weights,
        cache_dir=settings.model_folder,
    )
    choice = str(settings.tuned).strip()
    if not tuned or choice == "off":
        return base
    if choice == "auto":
        folder = newest_network(settings.model_folder, base.model_id)
        return base if folder is None else _tuned_backbone(folder, base)
    if base_model_id(choice) != base.model_id:
        raise ModelUnavailable(
            f"EMBEDDING_TUNED={choice} was not tuned from the configured backbone "
            f"{base.model_id}; set EMBEDDING_TUNED=auto, or a model id of this backbone"
        )
    return _tuned_backbone(network_folder(settings.model_folder, choice), base)


def store_for(model_folder: str | os.PathLike, model_id: str) -> EmbeddingStore:
    """The embedding store of a model id under ``model_folder``."""
    return EmbeddingStore(model_folder, model_id)


def index_folder(model_folder: str | os.PathLike, model_id: str) -> Path:
    """Where a model's saved vector index lives: ``<model folder>/<model id>/index``."""
    return store_for(model_folder, model_id).path / "index"


def network_folder(model_folder: str | os.PathLike, model_id: str) -> Path:
    """Where a tuned network's weights live: ``<model folder>/<model id>/network``."""
    return store_for(model_folder, model_id).path / "network"


def newest_network(model_folder: str | os.PathLike, base_id: str) -> Path | None:
    """The folder of the newest network tuned from ``base_id``, or None."""
    found = []
    for meta in Path(model_folder).glob(f"{base_id}{TUNED_MARK}*/network/meta.json"):
        try:
            found.append((meta.stat().st_mtime, meta.parent))
        except FileNotFoundError:  # replaced while listing
            continue
    return max(found)[1] if found else None


_tuned_cache: dict[str, tuple[float, Any]] = {}


def _tuned_backbone(folder: Path, base: Any) -> Any:
    """The tuned backbone saved in ``folder`` on top of ``base``, cached per process."""
    try:
        mtime = (folder / "meta.json").stat().st_mtime
    except FileNotFoundError as exc:
        raise ModelUnavailable(
            f"no tuned network at {folder}: run `flask --app wsgi model tune` first"
        ) from exc
    key = str(folder)
    cached = _tuned_cache.get(key)
    if cached is None or cached[0] != mtime:
        cached = (mtime, TunedNetwork.load(folder).backbone(base))
        _tuned_cache[key] = cached
        logger.info("tuned backbone %s loaded", cached[1].model_id)
    return cached[1]


def backbone_for(model_id: str, settings: BackboneSettings) -> Any:
    """The embedder whose vectors carry ``model_id``: the configured one, or one rebuilt
    from the id (backbone name, weights, input size, pooling, tuned network); raises
    ``ModelUnavailable`` saying why when this install cannot run it."""
    runtime.select(settings.runtime, settings.threads)  # a wrong setting fails here, loudly
    try:
        configured = load_backbone(settings)
    except Exception as exc:  # noqa: BLE001 - weights missing etc.: try the id's own backbone
        logger.warning("configured backbone unavailable: %s", exc)
        configured = None
    if configured is not None and configured.model_id == model_id:
        return configured
    base_id = base_model_id(model_id)
    name, _, rest = base_id.partition("-")
    parts = rest.split("-")
    if name not in BACKBONE_NAMES or len(parts) != 3 or not parts[1].isdigit():
        raise ModelUnavailable(f"Model {model_id} is not one this shop can run.")
    digest, size, pooling = parts
    try:
        base = get_backbone(
            name,
            input_size=int(size),
            pooling=pooling,
            weights="random" if digest.startswith("seed") and name != "tiny" else "imagenet",
            resnet_weights=settings.resnet_weights,
            cache_dir=settings.model_folder,
        )
    except Exception as exc:  # noqa: BLE001 - unknown pooling, weights unavailable...
        raise ModelUnavailable(f"Model {model_id} cannot be loaded here: {exc}") from exc
    if base.model_id != base_id:
        raise ModelUnavailable(
            f"Model {model_id} cannot be loaded here: the available weights give {base.model_id}."
        )
    if not is_tuned_id(model_id):
        return base
    try:
        return _tuned_backbone(network_folder(settings.model_folder, model_id), base)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"Model {model_id} cannot be loaded here: {exc}") from exc


def image_key(image_path: str | None, image_sha256: str | None) -> str:
    """What an embedding was computed from: the photo's digest, else its path."""
    return image_sha256 or f"path:{image_path}"
