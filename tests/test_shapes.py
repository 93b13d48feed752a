"""The shape convention is enforced: every annotation in mivar_jax is checked while the tests run
(jaxtyping's import hook with beartype, installed by tests/conftest.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jaxtyping
import pytest

from mivar_jax.circuits.pruning import prune
from mivar_jax.models.interventions import EdgeMix
from mivar_jax.tasks.metrics import logit_diff


def test_a_wrong_shape_or_dtype_fails_eagerly_and_under_jit():
    logits, ids = jnp.zeros((3, 10)), jnp.zeros((3, 2), jnp.int32)
    assert logit_diff(logits, ids, ids).shape == (3,)
    with pytest.raises(jaxtyping.TypeCheckError, match="parameter 'incorrect_NxAi'"):
        logit_diff(logits, ids, jnp.zeros((4, 2), jnp.int32))  # N = 3 inputs, then 4
    with pytest.raises(jaxtyping.TypeCheckError, match="parameter 'correct_NxAc'"):
        logit_diff(logits, jnp.zeros((3, 2)), ids)  # answer ids must be integers
    with pytest.raises(jaxtyping.TypeCheckError, match="parameter 'logits_NxV'"):
        jax.jit(logit_diff)(jnp.zeros((3, 4, 10)), ids, ids)  # checked while tracing


def test_pytree_dataclasses_are_checked():
    with pytest.raises(jaxtyping.TypeCheckError, match="parameter 'corrupted'"):
        EdgeMix(jnp.ones((5, 7)), jnp.zeros((6, 1, 1, 8)))  # S = 5 sources, then 6


def test_plain_annotations_are_checked():
    with pytest.raises(jaxtyping.TypeCheckError, match="parameter 'graph'"):
        prune("not a graph", jnp.ones(3, bool))
