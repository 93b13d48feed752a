"""Per-input scores larger than memory: written to disk in shards as they are computed, read back
memory-mapped in column blocks.

``ScoreShards`` is a lazy [N, items] float32 array: safetensors files ``shard-00000.safetensors`` …
in one folder, each holding whole inputs, ``per_input`` [n, items] and ``rows`` [n] int64 (which
inputs: estimators finish inputs in batches, not always in order). Readers take column blocks
[N, w] (every input, w edges) of about ``budget`` bytes; every per-edge computation (aggregation,
the bootstrap, per-edge statistics) runs block by block, so its memory is set by ``budget``, not by
N × E. Results do not depend on the blocks: exact sums and sorts are per edge (module docstrings of
``aggregation`` and ``stats.bootstrap``).

Why safetensors shards and not a chunked array store (zarr, tensorstore): the scores are written
once, by whole inputs, and read by edges. Row shards written atomically one by one are what a
crash-safe run directory needs (a shard is whole or absent), and a memory-mapped column slice of a
row-major shard reads w · 4 contiguous bytes per input, which is the whole cost of a chunked
store's column chunks without its dependency (zarr, numcodecs) or its codecs (float noise does not
compress). Safetensors is already the format of ``Scores``, it is what the model ecosystem shards
large arrays with (an index over ``*-0000k.safetensors`` files), and any safetensors reader (numpy,
torch, the Rust crate) opens a shard.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import struct

import numpy as np

from mivar_jax._io import atomic_write_bytes

SHARD = "shard-{:05d}.safetensors"
MAX_SHARD_BYTES = 256 * 2**20


def host_memory() -> int:
    """Physical memory of this machine in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _memmap(path: str) -> np.ndarray:
    """The ``per_input`` array of a shard, memory-mapped (safetensors: an 8-byte little-endian
    header length, a JSON header of dtypes, shapes and data offsets, then the data)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        info = json.loads(f.read(n))["per_input"]
    if info["dtype"] != "F32" or len(info["shape"]) != 2:
        raise ValueError(f"{path}: per_input must be a float32 matrix, got {info['dtype']} {info['shape']}")
    return np.memmap(path, np.float32, "r", offset=8 + n + info["data_offsets"][0], shape=tuple(info["shape"]))


def _shard_rows(path: str) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        return f.get_tensor("rows")


class ScoreShards:
    """Per-input scores [N, items] float32 in safetensors shards (module docstring).

    ``x[rows]`` is a lazy view of some inputs; ``x[rows, cols]`` and ``x[:, cols]`` read those
    scores (only those bytes); ``x.column_blocks()`` yields (columns, [N, w] array) blocks of about
    ``budget`` bytes; ``np.asarray(x)`` reads everything."""

    def __init__(self, files, n_items: int, budget: int, rows=None):
        self.files, self.n_items, self.budget = tuple(os.fspath(f) for f in files), int(n_items), int(budget)
        held = [_shard_rows(f) for f in self.files]
        every = np.concatenate(held) if held else np.zeros(0, np.int64)
        if not np.array_equal(np.sort(every), np.arange(every.size)):
            raise ValueError(f"the shards of {os.path.dirname(self.files[0])} do not hold each input exactly once")
        self._shard = np.empty(every.size, np.int64)
        self._local = np.empty(every.size, np.int64)
        self._shard[every] = np.repeat(np.arange(len(held)), [len(r) for r in held])
        self._local[every] = np.concatenate([np.arange(len(r)) for r in held])
        self._rows = np.arange(every.size) if rows is None else np.asarray(rows, np.int64)

    shape = property(lambda self: (len(self._rows), self.n_items))
    ndim, dtype = 2, np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self._rows)

    def _view(self, rows) -> ScoreShards:
        view = object.__new__(ScoreShards)
        view.__dict__.update(self.__dict__)
        view._rows = self._rows[np.atleast_1d(np.arange(len(self._rows))[rows])]
        return view

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self._view(key)
        rows, cols = key
        return self._view(rows).read(cols)

    def read(self, cols=slice(None)) -> np.ndarray:
        """Scores of every input of this view at ``cols`` (a slice or indices): [N, len(cols)]."""
        width = len(range(self.n_items)[cols]) if isinstance(cols, slice) else len(np.atleast_1d(cols))
        out = np.empty((len(self._rows), width), np.float32)
        shard, local = self._shard[self._rows], self._local[self._rows]
        for k in np.unique(shard):
            sel = np.nonzero(shard == k)[0]
            m = _memmap(self.files[k])
            out[sel] = m[:, cols][local[sel]] if isinstance(cols, slice) else m[np.ix_(local[sel], np.atleast_1d(cols))]
            del m
        return out

    def column_blocks(self):
        """(columns slice, scores [N, w]) over every column, w = ⌊budget / 4N⌋ (at least 1)."""
        w = max(1, self.budget // (4 * max(1, len(self._rows))))
        for c in range(0, self.n_items, w):
            cols = slice(c, min(c + w, self.n_items))
            yield cols, self.read(cols)

    def __array__(self, dtype=None, copy=None):
        return self.read().astype(dtype or np.float32, copy=False)

    def __repr__(self) -> str:
        return f"ScoreShards({self.shape}, {len(self.files)} shards in {os.path.dirname(self.files[0])})"


def column_blocks(per_input):
    """(columns, [N, w] block) over the scores: one block for an in-memory array, blocks of about
    its budget for ScoreShards."""
    if isinstance(per_input, ScoreShards):
        yield from per_input.column_blocks()
    else:
        yield slice(None), np.asarray(per_input, np.float32)


class RowSink:
    """Where an estimator puts its scores, whole inputs at a time: ``put(rows, values [n, items],
    clean [n])`` (the full model's metric on those inputs; 0 when not given), then ``finish()``.
    ``check(rows, values)`` (optional) vets each batch as it arrives. ``resume(checkpoint)`` first
    takes the batches a ``Checkpoint`` holds, then saves every new batch there; the driver skips
    the batches that are ``done``."""

    def __init__(self, n_rows: int, n_items: int, fill: float, check=None):
        self.n_rows, self.n_items, self.fill, self.check = n_rows, n_items, fill, check
        self.clean = np.zeros(n_rows, np.float32)
        self.held = np.zeros(n_rows, bool)  # inputs whose scores are in
        self._restored = np.zeros(n_rows, bool)
        self.checkpoint: Checkpoint | None = None

    def done(self, rows) -> bool:
        """Whether every one of ``rows`` is in already (restored from a checkpoint)."""
        return bool(self.held[np.asarray(rows, np.int64)].all())

    def put(self, rows, values, clean=None) -> None:
        rows, values = np.asarray(rows, np.int64), np.asarray(values, np.float32)
        clean = np.zeros(len(rows), np.float32) if clean is None else np.asarray(clean, np.float32)
        if values.shape != (len(rows), self.n_items) or clean.shape != rows.shape:
            raise ValueError(
                f"a batch of {len(rows)} inputs must be [{len(rows)}, {self.n_items}] scores and [{len(rows)}] "
                f"clean metrics, got {values.shape} and {clean.shape}"
            )
        new = ~self._restored[rows]  # a restored input keeps its saved scores (a batch may span a saved one)
        rows, values, clean = rows[new], values[new], clean[new]
        seen, counts = np.unique(rows, return_counts=True)
        twice = np.union1d(rows[self.held[rows]], seen[counts > 1])
        if twice.size:
            raise ValueError(f"inputs {twice[:5].tolist()} were put twice")
        if not len(rows):
            return
        if self.check is not None:
            self.check(rows, values)
        self._store(rows, values)
        self.clean[rows], self.held[rows] = clean, True
        if self.checkpoint is not None:
            self.checkpoint.save(rows, values, clean)

    def resume(self, checkpoint: Checkpoint) -> int:
        """Take the batches saved in ``checkpoint``, then save each new one there; the inputs restored."""
        for rows, values, clean in checkpoint.batches():
            self.put(rows, values, clean)
        self._restored = self.held.copy()
        self.checkpoint = checkpoint
        return int(self.held.sum())

    def _complete(self) -> None:
        if not self.held.all():
            raise ValueError(f"{int((~self.held).sum())} of {self.n_rows} inputs were never scored")


class ArraySink(RowSink):
    """Scores kept in memory: ``finish()`` returns the [N, items] array."""

    def __init__(self, n_rows, n_items, fill, check=None):
        super().__init__(n_rows, n_items, fill, check)
        self.array = np.full((n_rows, n_items), fill, np.float32)

    def _store(self, rows, values):
        self.array[rows] = values

    def finish(self) -> np.ndarray:
        self._complete()
        return self.array


class ShardWriter(RowSink):
    """Scores written to ``folder`` as they come, in shards of at most ``shard_bytes`` (whole
    inputs; at least one per shard); ``finish()`` returns the ScoreShards, read in blocks of
    ``budget`` bytes. Shards left in ``folder`` by an earlier, interrupted run are removed first
    (its finished batches come back through a ``Checkpoint``)."""

    def __init__(self, folder, n_rows, n_items, fill, *, shard_bytes: int, budget: int, check=None):
        super().__init__(n_rows, n_items, fill, check)
        self.folder, self.budget = os.fspath(folder), budget
        self.per_shard = max(1, shard_bytes // (4 * n_items))
        os.makedirs(self.folder, exist_ok=True)
        for stale in glob.glob(os.path.join(self.folder, "shard-*.safetensors*")):
            os.remove(stale)
        self._rows, self._values, self.files = [], [], []

    def _store(self, rows, values):
        self._rows.append(rows)
        self._values.append(values)
        while sum(len(r) for r in self._rows) >= self.per_shard:
            self._flush(self.per_shard)

    def _flush(self, n: int) -> None:
        from safetensors.numpy import save

        rows, values = np.concatenate(self._rows), np.concatenate(self._values)
        path = os.path.join(self.folder, SHARD.format(len(self.files)))
        atomic_write_bytes(path, save({"per_input": np.ascontiguousarray(values[:n]), "rows": rows[:n]}))
        self.files.append(path)
        self._rows, self._values = ([rows[n:]], [values[n:]]) if n < len(rows) else ([], [])

    def finish(self) -> ScoreShards:
        if self._rows:
            self._flush(sum(len(r) for r in self._rows))
        self._complete()
        return ScoreShards(self.files, self.n_items, self.budget)


class Checkpoint:
    """A scoring job's finished batches in ``folder``, so that an interrupted job resumes where it
    stopped: ``job.json`` (what the job is: a folder holding another job's batches is cleared) and
    one safetensors file per batch (``per_input`` [n, items], ``rows`` [n], ``clean`` [n]), each
    written atomically (whole or absent). ``remove()`` once the scores are safe elsewhere."""

    def __init__(self, folder, job: dict):
        self.folder = os.fspath(folder)
        job = json.loads(json.dumps(job, sort_keys=True))
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, "job.json")
        try:
            with open(path) as f:
                same = json.load(f) == job
        except (OSError, ValueError):
            same = False
        if not same:
            for stale in glob.glob(os.path.join(self.folder, "batch-*")):
                os.remove(stale)
            atomic_write_bytes(path, json.dumps(job, sort_keys=True, indent=1).encode())

    def _files(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.folder, "batch-*.safetensors")))

    def batches(self):
        """(rows [n], per_input [n, items], clean [n]) of every saved batch."""
        from safetensors.numpy import load_file

        for path in self._files():
            t = load_file(path)
            yield t["rows"], t["per_input"], t["clean"]

    def save(self, rows, values, clean) -> None:
        from safetensors.numpy import save

        blob = save({"per_input": np.ascontiguousarray(values), "rows": rows, "clean": clean})
        atomic_write_bytes(os.path.join(self.folder, f"batch-{int(rows[0]):09d}.safetensors"), blob)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
