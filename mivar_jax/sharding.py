"""Device meshes for the estimators and statistics: axes ``("edges", "inputs")``.

Work is split so that every device runs the very same program on blocks of the same shape as a
single device would (``shard_map`` over per-device blocks): results are bitwise identical on 1 or
many devices, only faster.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from jax.sharding import Mesh, PartitionSpec

EDGES, INPUTS = "edges", "inputs"


def make_mesh(edges: int | None = None, inputs: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(edges, inputs)`` mesh over ``devices`` (default: every visible device, all on ``edges``)."""
    devices = list(devices if devices is not None else jax.devices())
    if inputs < 1 or len(devices) % inputs:
        raise ValueError(f"inputs={inputs} must divide the {len(devices)} devices")
    edges = len(devices) // inputs if edges is None else edges
    if edges < 1 or edges * inputs > len(devices):
        raise ValueError(f"a {edges} x {inputs} mesh needs {edges * inputs} devices; {len(devices)} are visible")
    auto = (jax.sharding.AxisType.Auto,) * 2  # let jit move inputs onto the mesh as needed
    return jax.make_mesh((edges, inputs), (EDGES, INPUTS), axis_types=auto, devices=devices[: edges * inputs])


def axis_size(mesh: Mesh | None, axis: str) -> int:
    return 1 if mesh is None else int(mesh.shape[axis])


def spmd(fn: Callable, mesh: Mesh | None, in_specs, out_specs) -> Callable:
    """``fn`` run once per device on its block (``shard_map``), or as is without a mesh."""
    if mesh is None or mesh.size == 1:
        return fn
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


Spec = PartitionSpec  # not P: P is the positions axis


DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "MIVAR_DISTRIBUTED")


def initialize_distributed() -> bool:
    """Join a multi-host run when the environment asks for one, before any JAX work.

    ``MIVAR_DISTRIBUTED=1``: ``jax.distributed.initialize()`` with JAX's auto-detection (Cloud
    TPU pods, SLURM, Open MPI, Kubernetes): on a TPU pod, run the same command on every host.
    ``JAX_COORDINATOR_ADDRESS=host:port`` with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``: an
    explicit cluster. Every process then sees all devices of all hosts; meshes span them.
    Returns whether a distributed runtime was started."""
    import os

    if not any(os.environ.get(k) for k in DISTRIBUTED_ENV):
        return False
    kwargs = {}
    for env, arg in (
        ("JAX_NUM_PROCESSES", "num_processes"),
        ("JAX_PROCESS_ID", "process_id"),
        ("MIVAR_HEARTBEAT_SECONDS", "heartbeat_timeout_seconds"),  # a lost process stops the others after this
    ):
        if os.environ.get(env):
            kwargs[arg] = int(os.environ[env])
    # CPU devices of several processes need a collectives backend to run one program (gloo, in jaxlib)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    return True
