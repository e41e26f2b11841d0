"""Embeddings on disk, one folder per model id: a memory-mapped base plus atomic delta parts.

Layout of ``<root>/<model_id>/``::

    state.json               {"base": 3, "folded_through": 41}: the live base and the parts in it
    base-3/ids.npy           int64 [n]      product ids, ascending
    base-3/embeddings.npy    float32 [n, d] rows in the order of ids.npy (memory-mapped on read;
                             a store opened with ``dtype=np.float16`` keeps half floats)
    base-3/keys.npy          bytes [n]      what each row was computed from (the image digest)
    parts/000042.npz         deltas written since: ``ids``, ``vectors``, ``keys`` (upserts), ``deleted``

Every file is written to a temporary name and renamed, so a killed writer leaves either the
old state or the new one, never half a file. A batch job writes one part per chunk, which
makes it resumable: on restart it skips the ids already stored. ``compact()`` writes a new
base folder, then switches ``state.json`` to it in one rename; only then are the old base and
the folded parts removed, so a crash at any point leaves a readable store.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

MODEL_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,120}$")


def _atomic_save(path: Path, write) -> None:
    """Write through ``write(fileobj)`` into a temporary file, fsync, then rename over path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class EmbeddingStore:
    """Read and write the embeddings of one model id."""

    def __init__(
        self, root: str | os.PathLike, model_id: str, dtype: type[np.floating] = np.float32
    ) -> None:
        if not MODEL_ID_RE.match(model_id):
            raise ValueError(f"invalid model id {model_id!r}")
        self.model_id = model_id
        self.dtype = np.dtype(dtype)
        self.path = Path(root) / model_id
        self._cache: tuple[tuple, np.ndarray, np.ndarray, np.ndarray] | None = None

    # -- reading -------------------------------------------------------------------------

    def _state(self) -> dict:
        state_file = self.path / "state.json"
        if not state_file.exists():
            return {"base": None, "folded_through": 0}
        return json.loads(state_file.read_text())

    def _parts(self, state: dict | None = None) -> list[Path]:
        """Parts not yet folded into the base, in write order."""
        folded = (state or self._state())["folded_through"]
        return [p for p in sorted((self.path / "parts").glob("*.npz")) if int(p.stem) > folded]

    def part_count(self) -> int:
        """How many parts wait to be folded into the base (each write adds one; see compact)."""
        return len(self._parts())

    def _all_parts(self) -> list[Path]:
        return sorted((self.path / "parts").glob("*.npz"))

    def _signature(self) -> tuple:
        """Changes whenever the stored state changes (cheap: a few stat calls)."""
        files = [self.path / "state.json", *self._parts()]
        return tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.exists())

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """All stored (ids int64 [n] ascending, vectors [n, d] of the store's dtype); cached
        until changed."""
        ids, vectors, _ = self.load_with_keys()
        return ids, vectors

    def load_with_keys(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like load(), plus each row's key (what it was computed from)."""
        signature = self._signature()
        if self._cache is not None and self._cache[0] == signature:
            return self._cache[1], self._cache[2], self._cache[3]
        ids, vectors, keys = self._load_base()
        deltas = []
        for part in self._parts():
            with np.load(part) as data:
                deltas.append({k: data[k] for k in ("ids", "vectors", "keys", "deleted")})
        if deltas:
            ids, vectors, keys = _apply(ids, vectors, keys, deltas)
        self._cache = (signature, ids, vectors, keys)
        return ids, vectors, keys

    def keys_by_id(self) -> dict[int, str]:
        """{product id: key} for deciding what needs embedding again."""
        ids, _, keys = self.load_with_keys()
        return {int(i): k.decode() for i, k in zip(ids, keys, strict=True)}

    def _load_base(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        base = self._state()["base"]
        if base is None:
            return np.empty(0, np.int64), np.empty((0, 0), self.dtype), np.empty(0, "S1")
        folder = self.path / f"base-{base}"
        ids = np.load(folder / "ids.npy")
        vectors = np.load(folder / "embeddings.npy", mmap_mode="r")
        keys = np.load(folder / "keys.npy")
        if not len(ids) == len(vectors) == len(keys):
            raise ValueError(f"{folder}: ids, embeddings and keys disagree in length")
        return ids, vectors, keys

    def dim(self) -> int | None:
        """The stored vectors' dimension (None while nothing is stored).

        Read from the base's header or the first part with vectors, not by applying every
        part: a batch job checks it before each of its many writes.
        """
        if self._cache is not None and self._cache[2].size:
            return int(self._cache[2].shape[1])
        state = self._state()
        if state["base"] is not None:
            base = np.load(self.path / f"base-{state['base']}" / "embeddings.npy", mmap_mode="r")
            if base.size:
                return int(base.shape[1])
        for part in self._parts(state):
            with np.load(part) as data:
                vectors = data["vectors"]
                if vectors.size:
                    return int(vectors.shape[1])
        return None

    def ids(self) -> np.ndarray:
        """The stored product ids."""
        return self.load()[0]

    def __len__(self) -> int:
        return len(self.ids())

    def id_count(self) -> int:
        """How many products are stored, from the id files only (no vector is read): cheap
        enough for a status page on a large catalogue."""
        state = self._state()
        ids: set[int] = set()
        if state["base"] is not None:
            ids = set(np.load(self.path / f"base-{state['base']}" / "ids.npy").tolist())
        for part in self._parts(state):
            with np.load(part) as data:
                ids -= set(data["deleted"].tolist())
                ids |= set(data["ids"].tolist())
        return len(ids)

    def positions(self, product_ids: Iterable[int]) -> np.ndarray:
        """Row numbers of the given ids, -1 where an id is not stored."""
        ids = self.ids()
        wanted = np.asarray(list(product_ids), dtype=np.int64)
        if len(ids) == 0:
            return np.full(len(wanted), -1, np.int64)
        pos = np.minimum(np.searchsorted(ids, wanted), len(ids) - 1)
        return np.where(ids[pos] == wanted, pos, -1)

    def get(self, product_ids: Iterable[int]) -> np.ndarray:
        """Vectors of the given ids (KeyError naming the first one missing)."""
        wanted = list(product_ids)
        pos = self.positions(wanted)
        if (pos < 0).any():
            raise KeyError(int(wanted[int(np.flatnonzero(pos < 0)[0])]))
        return np.asarray(self.load()[1][pos], dtype=np.float32)

    # -- writing -------------------------------------------------------------------------

    def write_part(
        self,
        ids: Iterable[int] = (),
        vectors: np.ndarray | None = None,
        keys: Iterable[str] | None = None,
        deleted: Iterable[int] = (),
    ) -> Path:
        """Record upserts (ids + vectors + keys) and deletions atomically as a new part."""
        ids_arr = np.asarray(list(ids), dtype=np.int64)
        if vectors is None:
            vectors = np.empty((0, 0), self.dtype)
        vectors = np.asarray(vectors, dtype=self.dtype)
        keys_list = [""] * len(ids_arr) if keys is None else list(keys)
        keys_arr = (
            np.asarray([k.encode() for k in keys_list], dtype="S")
            if keys_list
            else (np.empty(0, "S1"))
        )
        if len(ids_arr) and not len(ids_arr) == len(vectors) == len(keys_arr):
            raise ValueError("ids, vectors and keys differ in length")
        if len(ids_arr) and len(np.unique(ids_arr)) != len(ids_arr):
            raise ValueError("duplicate ids in one part")
        stored_dim = self.dim() if len(ids_arr) else None
        if stored_dim is not None and stored_dim != vectors.shape[1]:
            raise ValueError(f"dimension {vectors.shape[1]} does not match the stored {stored_dim}")
        deleted_arr = np.asarray(list(deleted), dtype=np.int64)
        parts = self._all_parts()
        number = max(int(parts[-1].stem) if parts else 0, self._state()["folded_through"]) + 1
        target = self.path / "parts" / f"{number:06d}.npz"
        _atomic_save(
            target,
            lambda fh: np.savez(
                fh, ids=ids_arr, vectors=vectors, keys=keys_arr, deleted=deleted_arr
            ),
        )
        return target

    def compact(self) -> None:
        """Fold every part into a new base folder and switch to it in one rename."""
        state = self._state()
        parts = self._parts(state)
        if not parts:
            return
        ids, vectors, keys = self.load_with_keys()
        vectors = np.ascontiguousarray(vectors, dtype=self.dtype)
        new_base = (state["base"] or 0) + 1
        folder = self.path / f"base-{new_base}"
        shutil.rmtree(folder, ignore_errors=True)  # leftovers of a compaction that crashed
        _atomic_save(folder / "embeddings.npy", lambda fh: np.save(fh, vectors))
        _atomic_save(folder / "ids.npy", lambda fh: np.save(fh, ids))
        _atomic_save(folder / "keys.npy", lambda fh: np.save(fh, keys))
        new_state = {"base": new_base, "folded_through": int(parts[-1].stem)}
        _atomic_save(self.path / "state.json", lambda fh: fh.write(json.dumps(new_state).encode()))
        # The switch is done; what follows only frees disk space.
        if state["base"] is not None:
            shutil.rmtree(self.path / f"base-{state['base']}", ignore_errors=True)
        for part in self._all_parts():
            if int(part.stem) <= new_state["folded_through"]:
                part.unlink(missing_ok=True)
        self._cache = None


def _apply(
    ids: np.ndarray, vectors: np.ndarray, keys: np.ndarray, deltas: list[dict[str, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply deltas in order (each: deletions, then upserts, which win over a deletion in the
    same part) to the base rows; ids come back sorted.

    Every row is copied once, whatever the number of parts: a build of a large catalogue
    leaves many parts of big rows (feature maps) to fold.
    """
    where = {int(i): (0, r) for r, i in enumerate(ids.tolist())}
    vector_sources, key_sources = [vectors], [keys]
    for n, delta in enumerate(deltas, start=1):
        for i in delta["deleted"].tolist():
            where.pop(int(i), None)
        for r, i in enumerate(delta["ids"].tolist()):
            where[int(i)] = (n, r)
        vector_sources.append(delta["vectors"])
        key_sources.append(delta["keys"])
    out_ids = np.fromiter(sorted(where), np.int64, len(where))
    source = np.fromiter((where[i][0] for i in out_ids.tolist()), np.int64, len(out_ids))
    row = np.fromiter((where[i][1] for i in out_ids.tolist()), np.int64, len(out_ids))
    filled = [v for v in vector_sources if v.size]
    dim = filled[0].shape[1] if filled else 0
    dtype = filled[-1].dtype if filled else vectors.dtype
    width = max((k.dtype.itemsize for k in key_sources if k.size), default=1)
    out_vectors = np.empty((len(out_ids), dim), dtype)
    out_keys = np.empty(len(out_ids), f"S{width}")
    for s in np.unique(source).tolist():
        chosen = source == s
        out_vectors[chosen] = np.asarray(vector_sources[s][row[chosen]])
        out_keys[chosen] = key_sources[s][row[chosen]]
    return out_ids, out_vectors, out_keys
