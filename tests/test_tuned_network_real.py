"""The catalogue-tuned backbone on real weights and real photos (slow): on look-alike article
types, fine-tuning the layers above the cut must do better than a classifier on the frozen
ImageNet embedding, trained and measured on the same photos."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from ml.backbones import get_backbone
from ml.colour import ColourDescriptor
from ml.head_training import TrainConfig, fit_head
from ml.tuned.config import TuneConfig, cut_layer
from ml.tuned.feature_maps import FeatureMaps
from ml.tuned.scoring import score_network
from ml.tuned.training import train_network
from tests.conftest import REFERENCE_CATALOG

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]

CATALOG = REFERENCE_CATALOG
# Types that ImageNet features confuse most often in this catalogue.
TYPES = ("Women|Flats", "Women|Heels", "Men|Casual Shoes", "Men|Sports Shoes")
TRAIN, TEST = 200, 60


@pytest.fixture(scope="module")
def photos():
    styles = CATALOG / "styles.csv"
    if not styles.is_file():
        pytest.skip(f"catalogue not found at {CATALOG} (set SHOP_TEST_CATALOG_PATH)")
    picked: dict[str, list[tuple[Path, str, str]]] = {t: [] for t in TYPES}
    with styles.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            label = f"{row['gender']}|{row['articleType']}"
            path = CATALOG / "images" / f"{row['id']}.jpg"
            if label in picked and len(picked[label]) < TRAIN + TEST and path.is_file():
                picked[label].append((path, row["subCategory"], row["baseColour"]))
    train = [(p, t, s, c) for t in TYPES for p, s, c in picked[t][:TRAIN]]
    test = [(p, t, s, c) for t in TYPES for p, s, c in picked[t][TRAIN:]]
    return train, test


def test_tuning_beats_the_frozen_embedding_on_look_alike_types(photos, tmp_path):
    train, test = photos
    base = get_backbone("efficientnet_lite0", input_size=160, cache_dir=tmp_path)
    config = TuneConfig(epochs=6, min_count=2)
    fm = FeatureMaps(base, cut_layer(base, config), config.mirror)
    descriptor = ColourDescriptor()

    def arrays(rows):
        paths = [r[0] for r in rows]
        labels = {
            "type": [r[1] for r in rows],
            "sub": [r[2] for r in rows],
            "colour": [r[3] for r in rows],
        }
        return fm.unflatten(fm.compute(paths)), descriptor.describe(paths), labels, paths

    train_maps, train_colours, train_labels, train_paths = arrays(train)
    test_maps, test_colours, test_labels, test_paths = arrays(test)
    network, _ = train_network(base, train_maps, train_colours, train_labels, config)
    tuned = score_network(network, base, test_maps, test_colours, test_labels)["type"]

    classes = list(TYPES)
    y = np.asarray([classes.index(t) for t in train_labels["type"]])
    head = fit_head(
        "type", base.embed(train_paths), y, classes, np.arange(len(y)), TrainConfig(epochs=40)
    )
    predicted = head.predict(base.embed(test_paths)).argmax(axis=1)
    frozen = float(np.mean(np.asarray(classes)[predicted] == np.asarray(test_labels["type"])))
    assert tuned >= 0.8
    assert tuned > frozen, (tuned, frozen)
