"""Wall time and JAX compilation time of a piece of work, measured apart."""

from __future__ import annotations

import time

import jax.monitoring

# tracing, lowering and XLA compilation: everything a first call pays that a later one does not
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


class Stopwatch:
    """``with Stopwatch() as t: ...`` then ``t.seconds`` (wall) and ``t.compile_seconds`` (the part
    JAX spent tracing and compiling, from its monitoring events; in this thread's work and any
    other compiling meanwhile)."""

    def __init__(self):
        self.seconds = 0.0
        self.compile_seconds = 0.0

    def _listen(self, event: str, duration: float, **_) -> None:
        if event in COMPILE_EVENTS:
            self.compile_seconds += duration

    @property
    def elapsed(self) -> float:
        """Seconds since the start (while running)."""
        return time.perf_counter() - self._t0

    def __enter__(self) -> Stopwatch:
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> bool:
        self.seconds = time.perf_counter() - self._t0
        jax.monitoring.unregister_event_duration_listener(self._listen)
        return False
