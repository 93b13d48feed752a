"""The estimator registry: every estimator is registered here by name, with how it runs and what
it costs. ``attribute`` looks methods up here; adding an estimator is one new module in
``mivar_jax/estimators/`` that calls ``register`` (``load`` imports them all; see ``gradient.py``
for the family scored from one run's slot gradients, ``exact.py`` for exact patching)."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from typing import NamedTuple


class Options(NamedTuple):
    """How a job is scored (hashable: part of the key of its compiled kernels)."""

    metric: str
    level: str  # "edge" | "node"
    ablation: str  # "patch" | "zero" | "mean"
    steps: int | None  # integration steps m (the methods that take them)
    ig_convention: str
    pooling: str


@dataclasses.dataclass(frozen=True)
class Estimator:
    """``run(model, data, options, resources, estimator, subset, progress, sink)`` does the job
    through the driver (``engine``), putting per-input scores [n, items] and the clean metric [n]
    into ``sink`` (``_shards.RowSink``: memory or disk) a batch of inputs at a time, and skipping
    the batches the sink already holds (``engine.batches(skip=sink.done)``: a resumed job). Dense
    estimators (every edge at once from a few runs) give ``kernel(cfg, options, params, batch, clean_nodes, ref_nodes, ref_input,
    ref_is_run) → [N, S, T]`` and ``bytes_per_input(cfg, n_positions)``; ``run`` is then the
    shared dense driver. ``options``: the optional parameters it reads (``steps``,
    ``ig_convention``, ``pooling``); ``subset``: whether it can score a subset of edges."""

    name: str
    run: Callable
    kernel: Callable | None = None
    bytes_per_input: Callable | None = None
    options: tuple[str, ...] = ()
    subset: bool = False

    @property
    def takes_steps(self) -> bool:
        return "steps" in self.options


ESTIMATORS: dict[str, Estimator] = {}


def register(estimator: Estimator) -> Estimator:
    if estimator.name in ESTIMATORS:
        raise ValueError(f"an estimator named {estimator.name!r} is already registered")
    ESTIMATORS[estimator.name] = estimator
    return estimator


def get(name: str) -> Estimator:
    if name not in ESTIMATORS:
        raise ValueError(f"unknown method {name!r}; choose from {list(ESTIMATORS)}")
    return ESTIMATORS[name]


def load() -> dict[str, Estimator]:
    """Import every module of ``mivar_jax.estimators`` (each registers its estimators); the registry."""
    import mivar_jax.estimators as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    return ESTIMATORS
