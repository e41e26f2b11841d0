"""Where the networks run: ONNX Runtime (the default) or Keras itself.

Keras defines and trains every network; serving, indexing and the frozen part of tuning only
run them forward. Keras' own ``predict_on_batch`` on TensorFlow carries several milliseconds
of overhead per call and runs EfficientNet's depthwise convolutions slowly on a CPU, so each
network is exported once to ONNX (``model.export(format="onnx")``) and run by ONNX Runtime:
about four times the throughput at batch 64 and a twentieth of the latency for one photo
(README, "Performance"). The exported file is cached beside the converted weights under a
name that carries the network's model id (which digests its weights), so a new model id gets
its own export and an old one is never reused for it.

Every export is checked against Keras on a probe batch before it is used: a runtime that
disagrees (cosine below ``MIN_COSINE`` on any row) raises ``RuntimeMismatch`` instead of
serving different vectors.

The settings ``INFERENCE_RUNTIME`` (``onnxruntime`` or ``keras``) and ``INFERENCE_THREADS``
(ONNX Runtime's threads per process, 0: one per core) reach ``select`` through
``ml.registry.BackboneSettings``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata as md
import logging
import os
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

RUNTIMES = ("onnxruntime", "keras")
DEFAULT_RUNTIME = "onnxruntime"
MIN_COSINE = 0.999
EXPORT_FOLDER = "runtime"
PROBE_ROWS = 2
MICRO_BATCH = 8

Runner = Callable[[np.ndarray], np.ndarray]


class RuntimeMismatch(RuntimeError):
    """An exported network does not compute what its Keras original computes."""


# The process's choice: set from the app's settings (``ml.registry.load_backbone``).
_state: dict[str, Any] = {"runtime": DEFAULT_RUNTIME, "threads": 0}
# The newest runners of this process; a tuning run scores a new network every epoch, so the
# oldest are let go.
_runners: OrderedDict[tuple[str, str, int], Runner] = OrderedDict()
MAX_RUNNERS = 12
_lock = threading.Lock()


def select(runtime: str | None = None, threads: int | None = None) -> str:
    """Choose the process's runtime (and ONNX Runtime's thread cap); returns the runtime."""
    if runtime is not None:
        runtime = str(runtime).strip().lower()
        if runtime not in RUNTIMES:
            raise ValueError(
                f"INFERENCE_RUNTIME must be one of {', '.join(RUNTIMES)}, got {runtime!r}"
            )
        _state["runtime"] = runtime
    if threads is not None:
        if int(threads) < 0:
            raise ValueError(f"INFERENCE_THREADS must be 0 or more, got {threads!r}")
        _state["threads"] = int(threads)
    return current()


def current() -> str:
    """The runtime this process uses."""
    runtime = _state["runtime"]
    if runtime not in RUNTIMES:
        raise ValueError(f"INFERENCE_RUNTIME must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    return runtime


def runner(model: Any, key: str, cache_dir: str | os.PathLike | None) -> Runner:
    """``x -> model(x)`` as float32 for the Keras ``model`` named ``key`` (a model id plus the
    part of the network, unique per weights), on the selected runtime. Built once per
    process; the ONNX export is read from ``cache_dir`` when it is there (None: exported in a
    scratch folder every time)."""
    runtime = current()
    cache_key = (runtime, key, _state["threads"])
    with _lock:
        found = _runners.get(cache_key)
        if found is not None:
            _runners.move_to_end(cache_key)
            return found
    if runtime == "keras":
        built = _keras_runner(model)
    else:
        built = _onnx_runner(model, key, cache_dir, _state["threads"])
    with _lock:
        built = _runners.setdefault(cache_key, built)
        while len(_runners) > MAX_RUNNERS:
            _runners.popitem(last=False)
        return built


def forget(key_prefix: str = "") -> None:
    """Drop this process's runners whose key starts with ``key_prefix`` (tests, retraining)."""
    with _lock:
        for cache_key in [k for k in _runners if k[1].startswith(key_prefix)]:
            del _runners[cache_key]


def export_path(cache_dir: str | os.PathLike, key: str) -> Path:
    """Where the ONNX export of ``key`` is cached: its name also carries the exporter's
    versions, so an upgrade exports again instead of reading an older tool's file."""
    return Path(cache_dir) / EXPORT_FOLDER / f"{key}.{_tool_tag()}.onnx"


# -- the runtimes --------------------------------------------------------------------------


def _keras_runner(model: Any) -> Runner:
    lock = threading.Lock()  # Keras models are not safe to call from two threads at once

    def run(x: np.ndarray) -> np.ndarray:
        with lock:
            return np.asarray(model.predict_on_batch(x), np.float32)

    return run


def _onnx_runner(model: Any, key: str, cache_dir: str | os.PathLike | None, threads: int) -> Runner:
    import onnxruntime as ort

    # Keras' answer on the probe batch first: it is what the export is checked against, and
    # Keras exports only a model that has been called.
    probe = _probe(model)
    expected = np.asarray(model.predict_on_batch(probe), np.float32)
    if cache_dir is None:
        with tempfile.TemporaryDirectory(prefix="onnx-export-") as tmp:
            data = _export(model, Path(tmp) / "model.onnx").read_bytes()
    else:
        path = export_path(cache_dir, key)
        if not path.is_file():
            _export(model, path)
        data = path.read_bytes()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle threads sleep instead of spinning: photos are decoded on another thread meanwhile.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        # InferenceSession.run is safe to call from several threads. Small slices keep each
        # layer's activations in the CPU's caches: on two cores 8 photos a call run about
        # 1.6x faster than 64 (README, "Performance").
        x = np.ascontiguousarray(x, np.float32)
        if len(x) <= MICRO_BATCH:
            return session.run(None, {input_name: x})[0]
        return np.concatenate(
            [
                session.run(None, {input_name: x[i : i + MICRO_BATCH]})[0]
                for i in range(0, len(x), MICRO_BATCH)
            ]
        )

    _check_agreement(run(probe), expected, key)
    return run


def _export(model: Any, path: Path) -> Path:
    """Write ``model`` as ONNX to ``path`` (renamed into place: concurrent exporters each
    write their own file and the last rename wins, with identical contents)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # The exporter probes numpy for an alias it no longer has; harmless.
            warnings.filterwarnings("ignore", category=FutureWarning)
            model.export(str(tmp), format="onnx", verbose=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("exported %s to ONNX in %.1f s", path.name, time.perf_counter() - started)
    return path


def _probe(model: Any) -> np.ndarray:
    """A fixed batch shaped like the model's input (photo inputs in the 0..255 range)."""
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    rng = np.random.default_rng(0)
    probe = rng.uniform(-1.0, 1.0, (PROBE_ROWS, *shape)).astype(np.float32)
    return (probe + 1.0) * 127.5 if shape[-1] == 3 else probe


def _check_agreement(ours: np.ndarray, theirs: np.ndarray, key: str) -> None:
    """Raise ``RuntimeMismatch`` unless the export's and Keras' answers to the probe agree."""
    ours = np.asarray(ours, np.float64).reshape(PROBE_ROWS, -1)
    theirs = np.asarray(theirs, np.float64).reshape(PROBE_ROWS, -1)
    if ours.shape != theirs.shape:
        raise RuntimeMismatch(
            f"the ONNX export of {key} gives {ours.shape[1]} numbers a row, Keras "
            f"{theirs.shape[1]}; set INFERENCE_RUNTIME=keras to serve through Keras"
        )
    cos = (ours * theirs).sum(1) / np.maximum(
        np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1), 1e-12
    )
    if float(cos.min()) < MIN_COSINE:
        raise RuntimeMismatch(
            f"the ONNX export of {key} disagrees with Keras (cosine {float(cos.min()):.5f} < "
            f"{MIN_COSINE}); set INFERENCE_RUNTIME=keras to serve through Keras"
        )


@functools.cache
def _tool_tag() -> str:
    """Eight hex digits over the versions that shape an export."""
    parts = []
    for package in ("keras", "tensorflow-cpu", "tf2onnx", "onnx"):
        try:
            parts.append(f"{package}={md.version(package)}")
        except md.PackageNotFoundError:
            parts.append(f"{package}=-")
    return hashlib.sha256(";".join(parts).encode()).hexdigest()[:8]
