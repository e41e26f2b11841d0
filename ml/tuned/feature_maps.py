"""The frozen lower part of a backbone (feature maps at the cut) and the trainable part above."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ml import runtime
from ml.preprocess import ImageSource, iter_square_batches, read_ahead


class FeatureMaps:
    """The frozen lower part of a backbone: photos -> half-float feature maps at the cut."""

    def __init__(self, backbone: Any, cut: str, mirror: bool = True) -> None:
        import keras

        self.backbone = backbone
        self.cut = cut
        self.mirror = mirror
        self.views = 2 if mirror else 1
        # Shares the backbone's layers: inference only, nothing here is trained.
        self._model = keras.Model(backbone.model.input, backbone.model.get_layer(cut).output)
        self.shape = tuple(int(d) for d in self._model.output.shape[1:])

    @property
    def store_id(self) -> str:
        """Name of the store that keeps these maps for a catalogue."""
        return f"{self.backbone.model_id}.maps-{self.cut.replace('_', '-')}-v{self.views}"

    @property
    def row_size(self) -> int:
        """Numbers per photo: views x height x width x channels."""
        return int(self.views * np.prod(self.shape))

    def compute(self, images: Sequence[ImageSource], batch_size: int = 64) -> np.ndarray:
        """float16 [n, views * h * w * c]: the maps of each photo (and of its mirror image)."""
        parts = []
        batches = iter_square_batches(images, self.backbone.input_size, batch_size)
        for batch in read_ahead(batches):
            maps = self.of_prepared(self.backbone.prepare(batch))
            parts.append(maps.reshape(len(batch), -1).astype(np.float16))
        return np.concatenate(parts, axis=0)

    def of_prepared(self, x: np.ndarray) -> np.ndarray:
        """float32 [n, views, h, w, c]: the maps of a prepared batch (and of its mirror image)."""
        run = runtime.runner(
            self._model, f"{self.backbone.model_id}-to-{self.cut}", self.backbone.cache_dir
        )
        views = [x, x[:, :, ::-1]] if self.mirror else [x]
        out = np.asarray(run(np.concatenate(views)), np.float32)
        return np.stack(list(out.reshape(len(views), len(x), *self.shape)), axis=1)

    def unflatten(self, rows: np.ndarray) -> np.ndarray:
        """[n, views, h, w, c] view of flat map rows."""
        return np.asarray(rows).reshape(len(rows), self.views, *self.shape)


def top_model(backbone: Any, cut: str) -> tuple[Any, Any]:
    """A trainable copy of the backbone (ImageNet weights) and its part above the cut."""
    import keras

    copy = keras.models.clone_model(backbone.model)
    copy.set_weights(backbone.model.get_weights())
    top = keras.Model(copy.get_layer(cut).output, copy.output)
    return copy, top


def weighted_layers(model: Any) -> list[Any]:
    """The layers that hold trained weights (the maps input excluded)."""
    return [layer for layer in model.layers if layer.weights and layer.name != "maps"]
