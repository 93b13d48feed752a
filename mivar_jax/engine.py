"""The one driver. Every batched job (each estimator, circuit evaluation, the bootstrap) runs through
it: sizes checked once, the data checked against the model, the device mesh, work sized by one
memory model, jitted SPMD kernels, batches of inputs (``batches``), progress.

Memory model: a job's working memory on one device is ``fixed + items × per_item`` bytes, where the
job states the cost of one of its items (one input of a gradient estimator, one (edge, input)
patch, one circuit on a batch of inputs, one bootstrap replicate); ``fit`` returns how many items
fit ``memory_budget`` (bytes per device, default ``DEFAULT_MEMORY_BUDGET``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from mivar_jax._checks import check_int, mib
from mivar_jax.sharding import EDGES, INPUTS, Spec, axis_size, make_mesh, spmd

DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes per device


@dataclasses.dataclass(frozen=True)
class Resources:
    """What a job may use: the mesh (None on one device), inputs per device (None: the job's
    default) and the memory budget in bytes per device."""

    mesh: Mesh | None
    batch_size: int | None
    memory_budget: int

    @property
    def n_devices(self) -> int:
        return 1 if self.mesh is None else self.mesh.size

    def axis(self, name: str) -> int:
        """Devices along mesh axis ``name`` (``EDGES`` or ``INPUTS``)."""
        return axis_size(self.mesh, name)


def resources(model=None, data=None, *, batch_size=None, memory_budget=None, mesh=None) -> Resources:
    """Check a job's sizes (and ``data`` against ``model``); the mesh defaults to every visible device."""
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size")
    if memory_budget is not None:
        memory_budget = check_int(memory_budget, "memory_budget (bytes per device)")
    if data is not None and model is not None:
        from mivar_jax.tasks.data import check_for_model

        check_for_model(data, model)
    if mesh is None and jax.device_count() > 1:
        mesh = make_mesh()
    mesh = mesh if mesh is not None and mesh.size > 1 else None
    return Resources(mesh, batch_size, memory_budget or DEFAULT_MEMORY_BUDGET)


def on_mesh(params, mesh: Mesh | None):
    """The parameters where a job on ``mesh`` runs: replicated on its devices, moved once per job
    (not at every kernel call), and left as they are when already there (``load_model(mesh=)``).
    Without a mesh, parameters spread over several devices come back to the default one."""
    if mesh is None:
        here = lambda x: x if len(x.sharding.device_set) == 1 else jax.device_put(x, jax.devices()[0])
        move = lambda x: here(x) if isinstance(x, jax.Array) else jnp.asarray(x)  # host arrays: copied once
    else:
        everywhere = NamedSharding(mesh, Spec())
        move = lambda x: x if getattr(x, "sharding", None) == everywhere else jax.device_put(x, everywhere)
    return jax.tree.map(move, params)


def fit(
    memory_budget: int, per_item: int, *, fixed: int = 0, cap: int, what: str, fix: str = "", must_fit: bool = True
) -> int:
    """How many items of ``per_item`` bytes fit ``memory_budget`` beside ``fixed`` bytes (at most
    ``cap``); when not even one does, a MemoryError naming ``what`` (one item) and ``fix``, or 1
    without ``must_fit`` (the item then runs alone)."""
    n = (memory_budget - fixed) // per_item
    if n < 1 and must_fit:
        raise MemoryError(
            f"a memory budget of {mib(memory_budget)} is too small for one {what}: it needs about "
            f"{mib(fixed + per_item)}" + (f"; {fix}" if fix else "")
        )
    return int(min(max(n, 1), cap))


def bucket(n: int) -> int:
    """The smallest power of two ≥ ``n`` (≥ 1): the padded size of a job's last or only chunk, so
    few compilations serve every size and little work is padding (a chunk is ``min(fit, bucket(n))``)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def even_chunks(n: int, fit: int, *, bucketed: bool = True) -> tuple[int, int]:
    """(chunk, calls) for ``n`` items at most ``fit`` per call: the fewest calls, of equal size
    (less than one padded item per call). ``bucketed``: one call is rounded up to ``bucket(n)``
    within ``fit`` (jobs of many sizes share compilations); otherwise it is exactly ``n``."""
    calls = -(-n // fit)
    return (min(fit, bucket(n)) if calls == 1 and bucketed else -(-n // calls)), calls


def kernel(fn: Callable, mesh: Mesh | None, in_specs, out_specs) -> Callable:
    """``fn`` jitted, run once per device on its block with a mesh (``sharding.spmd``). With several
    processes the outputs are gathered onto every device, so each process reads whole results."""
    if mesh is not None and jax.process_count() > 1:
        return jax.jit(spmd(fn, mesh, in_specs, out_specs), out_shardings=NamedSharding(mesh, Spec()))
    return jax.jit(spmd(fn, mesh, in_specs, out_specs))


def batches(
    data, res: Resources, per_device: int, *, widths=None, axis: str | None = None, skip=None
) -> Iterator[tuple]:
    """The driver's loop: ``(width, batch, rows)`` over ``data``, ``per_device`` inputs on each device
    along mesh ``axis`` (default: every device), inputs grouped by ``widths`` [N] (the window a
    patch can change; one group when None), every batch of a group one shape
    (``TaskData.batches``): results are read back as ``np.asarray(out)[: len(rows)]``. Batches
    whose rows ``skip(rows)`` are left out (a resumed job's finished ones: ``RowSink.done``); the
    others are the batches of the whole job, so a resumed job computes what an uninterrupted one would."""
    widths = np.zeros(len(data), np.int64) if widths is None else np.asarray(widths)
    devices = res.n_devices if axis is None else res.axis(axis)
    for width in np.unique(widths):
        for b, rows in data.batches(per_device, devices, rows=np.nonzero(widths == width)[0]):
            if skip is None or not skip(rows):
                yield int(width), b, rows


__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "EDGES",
    "INPUTS",
    "Resources",
    "batches",
    "bucket",
    "even_chunks",
    "fit",
    "kernel",
    "resources",
]
