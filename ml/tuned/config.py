"""What a tuned network is made of: its settings, where a backbone is cut, its model id, and
the classes its classifiers name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ml.labels import OTHER
from ml.provenance import cpuinfo

NETWORK_VERSION = 1
CLASSIFIERS = ("sub", "type", "colour")
# Where each backbone is cut: the layers above are trained, the ones below stay ImageNet's.
CUT_LAYERS = {
    # the end of the stride-8 stage: 20x20 maps at 160 px
    "efficientnet_lite0": "block4_add",
    "efficientnet_lite1": "block6_add",
    "efficientnet_lite2": "block6_add",
    "resnet50": "conv4_block6_out",
    "tiny": "conv1",
}
TUNED_MARK = ".ft"
# How the layers above the cut are trained: "float32" throughout, or "bfloat16": the 1x1
# convolutions (nearly all of the arithmetic) compute in bfloat16 on float32 weights, and the
# depthwise kernels stay ImageNet's (their bfloat16 gradients have no fast CPU kernel). Pays
# only on CPUs with bfloat16 matrix tiles (Intel AMX); elsewhere it is slower than float32.
PRECISIONS = ("float32", "bfloat16")

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TuneConfig:
    """Hyper-parameters of the fine-tuning (part of what the model id digests)."""

    epochs: int = 8
    batch_size: int = 128
    learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    dropout: float = 0.3
    shift: int = 1  # maps are shifted at random by up to this many cells
    scale: float = 16.0  # logit scale on the unit-normalised features
    # Shares of the served embedding's cosine: features, type probabilities, colour
    # descriptor, colour probabilities (see ``ml.tuned``).
    fusion: tuple[float, float, float, float] = (0.3, 0.35, 0.15, 0.2)
    mirror: bool = True  # train on mirror images too; embed as the mean of both
    min_count: int = 10  # classes with fewer examples are merged into "(other)"
    cut: str | None = None  # None: the backbone's CUT_LAYERS entry
    seed: int = 0
    # Shopper-like views per product (``ml.tuned.shoppers``) and the share of training
    # steps that take one of them instead of the studio photo; 0 views: studio photos only.
    shopper_views: int = 0
    shopper_share: float = 0.5
    precision: str = "float32"  # one of PRECISIONS

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        object.__setattr__(self, "fusion", tuple(float(w) for w in self.fusion))
        if (
            len(self.fusion) != 4
            or min(self.fusion) < 0
            or abs(sum(self.fusion) - 1.0) > 1e-6
            or self.fusion[0] == 0
            or self.fusion[2] == 0
        ):
            raise ValueError(
                "fusion needs four non-negative shares summing to 1, the features' and the "
                "colour descriptor's above 0"
            )
        if self.shift < 0 or self.min_count < 1:
            raise ValueError("shift must be >= 0 and min_count >= 1")
        if self.shopper_views < 0 or not 0.0 <= self.shopper_share <= 1.0:
            raise ValueError("shopper_views must be >= 0 and shopper_share within 0..1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form (without shopper views their settings are left out, and so is a
        float32 precision: networks tuned before these settings existed read back the same)."""
        out = asdict(self)
        if not self.shopper_views:
            del out["shopper_views"], out["shopper_share"]
        if self.precision == "float32":
            del out["precision"]
        return out


def bfloat16_tiles() -> bool:
    """True when the CPU multiplies bfloat16 matrices in hardware tiles (Intel AMX)."""
    return "amx_bf16" in (cpuinfo("flags") or "").split()


def training_precision(setting: str | None) -> str:
    """The precision a ``TUNE_PRECISION`` setting means on this machine: ``auto`` (or empty)
    is bfloat16 where the CPU has bfloat16 tiles and float32 elsewhere."""
    value = (setting or "auto").strip().lower()
    if value == "auto":
        return "bfloat16" if bfloat16_tiles() else "float32"
    if value not in PRECISIONS:
        raise ValueError(
            f"precision must be auto or one of {', '.join(PRECISIONS)}, not {setting!r}"
        )
    return value


def is_tuned_id(model_id: str) -> bool:
    """True for the id of a tuned network (``<base>.ft<digest>``)."""
    base, mark, digest = model_id.rpartition(TUNED_MARK)
    return (
        bool(base)
        and bool(mark)
        and len(digest) == 8
        and all(c in "0123456789abcdef" for c in digest)
    )


def base_model_id(model_id: str) -> str:
    """The backbone model id a tuned network was built on (the id itself when not tuned)."""
    return model_id.rpartition(TUNED_MARK)[0] if is_tuned_id(model_id) else model_id


def cut_layer(backbone: Any, config: TuneConfig = TuneConfig()) -> str:
    """The layer the backbone is cut at (a clear error for a backbone that has no such layer)."""
    name = config.cut or CUT_LAYERS.get(backbone.name)
    if name is None:
        raise ValueError(f"no cut layer known for backbone {backbone.name!r}")
    try:
        backbone.model.get_layer(name)
    except ValueError as exc:
        raise ValueError(f"backbone {backbone.model_id} has no layer {name!r}") from exc
    return name


def class_indices(classes: Sequence[str], labels: Sequence[str | None]) -> np.ndarray:
    """Each label's class index: a rare label goes to ``(other)`` when there is one; -1 for
    no label, or for one the classifier cannot name."""
    index = {c: i for i, c in enumerate(classes)}
    other = index.get(OTHER, -1)
    return np.asarray([index.get(lab, other) if lab else -1 for lab in labels], np.int64)
