"""The catalogue-tuned backbone an evaluation measures: for leave-one-out the served (or
newest) network of the base model, otherwise one trained on the kept rows only, the way
``flask model tune`` trains (cached per model, settings and row set)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ml.tuned.config import cut_layer
from ml.tuned.feature_maps import FeatureMaps
from ml.tuned.network import TunedBackbone, TunedNetwork
from webapp import registry
from worker.jobs import tuning
from worker.jobs.evaluation.artefacts import artefact_folder, rows_tag
from worker.jobs.evaluation.catalogue import Catalogue, backbone_for, catalogue_rows
from worker.jobs.evaluation.options import EvaluationError, Options, Say


def tuned_network(
    cat: Catalogue,
    colours: np.ndarray,
    train_rows: np.ndarray,
    opts: Options,
    say: Say | None,
    query_rows: np.ndarray | None = None,
) -> tuple[TunedBackbone, np.ndarray, np.ndarray | None]:
    """(the network's embedder, its embedding of every catalogue row, its embedding of
    ``query_rows``' photos as photo search embeds an upload; None without query rows)."""
    base = backbone_for(cat.model_id)
    if base is None:
        raise EvaluationError(f"The backbone of {cat.model_id} cannot be built here.")
    network = None
    if len(train_rows) == len(cat.ids) and not opts.retrain:
        network = _served_network(cat.model_id, opts.network)
        stored = _stored_vectors(network, cat) if network is not None else None
        if stored is not None and query_rows is None:
            if say:
                say(f"Tuned backbone {network.model_id}: its stored embeddings.")
            return network.backbone(base), stored, None
    config = tuning.tune_config() if network is None else network.config
    maps = catalogue_feature_maps(base, config, cat, say)
    if network is None:
        network = _trained_network(base, config, maps, colours, cat, train_rows, opts, say)
    embedder = network.backbone(base)
    queries = None
    if query_rows is not None:
        if say:
            say(f"Embedding {len(query_rows)} query photos as uploads ({network.model_id})...")
        queries = embedder.embed_maps(maps[query_rows], colours[query_rows], query=True)
    return embedder, embedder.embed_maps(maps, colours), queries


def _served_network(base_id: str, tuned_id: str | None) -> TunedNetwork | None:
    """The network ``tuned_id`` names, else the newest tuned on ``base_id``; None if none."""
    folder = registry.network_folder(tuned_id) if tuned_id else registry.newest_network(base_id)
    if folder is None or not (folder / "meta.json").exists():
        return None
    return TunedNetwork.load(folder)


def _stored_vectors(network: TunedNetwork, cat: Catalogue) -> np.ndarray | None:
    """The network's stored embedding of every catalogue row, or None when some are missing."""
    stored = registry.store_for(network.model_id)
    positions = stored.positions(cat.ids)
    if not (positions >= 0).all():
        return None
    return np.asarray(stored.load()[1])[positions]


def catalogue_feature_maps(base: Any, config: Any, cat: Catalogue, say: Say | None) -> np.ndarray:
    """Every catalogue photo's feature maps at the network's cut (stored; computed only
    where missing)."""
    fm = FeatureMaps(base, cut_layer(base, config), config.mirror)
    if say:
        say(f"Feature maps at {fm.cut} (stored; computed only where missing)...")
    have, maps = tuning.feature_maps(fm, catalogue_rows(cat))
    if len(have) != len(cat.ids):
        raise EvaluationError(
            f"{len(cat.ids) - len(have)} catalogue photos cannot be read: the tuned backbone "
            "cannot be evaluated on them"
        )
    return maps


def network_folder(cat: Catalogue, config: Any, train_rows: np.ndarray) -> Path:
    """Where the evaluation keeps the network trained with ``config`` on ``train_rows``."""
    tag = hashlib.sha256(
        (
            json.dumps(config.as_dict(), sort_keys=True)
            + rows_tag(cat.ids[train_rows])
            + f"val{tuning.VAL_FRACTION}"
        ).encode()
    ).hexdigest()[:10]
    return artefact_folder(cat.model_id) / f"network-{tag}"


def _trained_network(
    base: Any,
    config: Any,
    maps: np.ndarray,
    colours: np.ndarray,
    cat: Catalogue,
    train_rows: np.ndarray,
    opts: Options,
    say: Say | None,
) -> TunedNetwork:
    """A network trained on ``train_rows`` only, as ``model tune`` trains: a share of the
    rows it may see held back to validate and to calibrate the classifiers' confidences
    (never a query row)."""
    folder = network_folder(cat, config, train_rows)
    if (folder / "meta.json").exists() and not opts.retrain:
        return TunedNetwork.load(folder)
    labels = tuning.catalogue_labels(cat.ids)
    fit, val = tuning.hold_back(labels["type"], train_rows, tuning.VAL_FRACTION, config)
    if say:
        say(
            f"Tuning the backbone on {len(fit)} products ({len(val)} of the kept ones "
            f"held back to validate and calibrate; {config.epochs} epochs)..."
        )
    shoppers = tuning.shopper_views(base, config, catalogue_rows(cat), maps, colours, say=say)
    network, report = tuning.train_on(
        base, config, maps, colours, labels, fit, val_rows=val, shoppers=shoppers, say=say
    )
    if say:
        say(f"  trained in {report.seconds:.0f} s.")
    network.save(folder)
    return network
