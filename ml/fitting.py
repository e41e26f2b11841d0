"""The training loop the photo-search heads and the projections share: Adam on a cosine-decayed
learning rate, shuffled mini-batches."""

from __future__ import annotations

from typing import Any

import numpy as np


def fit_adam_cosine(
    model: Any,
    x: np.ndarray,
    y: Any,
    *,
    loss: Any,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    verbose: int = 0,
) -> Any:
    """Compile ``model`` with Adam whose learning rate decays to 0 over every step (a cosine),
    fit it on (x, y) and return the Keras History."""
    # Keras is heavy and only training needs it; serving stays NumPy-only.
    import keras

    steps = epochs * int(np.ceil(len(x) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(steps, 1))
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss)
    return model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=verbose,
    )
