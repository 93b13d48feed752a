"""The one driver. Every batched job (each estimator, circuit evaluation, the bootstrap) runs through
it: sizes checked once, the data checked against the model, the device mesh, work sized by one
memory model, jitted SPMD kernels, batches of inputs, progress.

Memory model: a job's working memory on one device is ``fixed + items × per_item`` bytes, where the
job states the cost of one of its items (one input of a gradient estimator, one (edge, input)
patch, one circuit on a batch of inputs, one bootstrap replicate); ``fit`` returns how many items
fit ``memory_budget`` (bytes per device, default ``DEFAULT_MEMORY_BUDGET``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
from jax.sharding import Mesh

from mivar_jax._checks import check_int, mib
from mivar_jax.sharding import EDGES, INPUTS, axis_size, make_mesh, spmd

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


def fit(memory_budget: int, per_item: int, *, fixed: int = 0, cap: int, what: str, fix: str = "") -> int:
    """How many items of ``per_item`` bytes fit ``memory_budget`` beside ``fixed`` bytes (at most
    ``cap``); a MemoryError naming ``what`` (one item) and ``fix`` when not even one does."""
    n = (memory_budget - fixed) // per_item
    if n < 1:
        raise MemoryError(
            f"a memory budget of {mib(memory_budget)} is too small for one {what}: it needs about "
            f"{mib(fixed + per_item)}" + (f"; {fix}" if fix else "")
        )
    return int(min(n, cap))


def kernel(fn: Callable, mesh: Mesh | None, in_specs, out_specs) -> Callable:
    """``fn`` jitted, run once per device on its block with a mesh (``sharding.spmd``)."""
    return jax.jit(spmd(fn, mesh, in_specs, out_specs))


__all__ = ["DEFAULT_MEMORY_BUDGET", "EDGES", "INPUTS", "Resources", "fit", "kernel", "resources"]
