"""Scores larger than memory: shards written as inputs finish, read back in column blocks. Every
consumer (aggregation, selection, the bootstrap, per-edge statistics, attribute itself) must give on
disk, with a budget that forces many shards and blocks, what it gives in memory: the same bits for
exact sums, sorts and selections; float reductions (means, standard deviations, jackknife sums)
within float32 rounding, since XLA does not promise one summation order across block widths."""

from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import pytest

import mivar_jax as mv
from mivar_jax import stats
from mivar_jax._shards import ArraySink, ScoreShards, ShardWriter
from mivar_jax.aggregation import AGGREGATIONS

N = 24


@pytest.fixture(scope="module")
def gpt2(hf_dirs):
    return mv.load_model(hf_dirs["gpt2"][0])


def _planted(graph: mv.Graph, seed: int = 0) -> np.ndarray:
    """Per-input scores with a planted signal on a few edges, heavy-tailed noise, exact ties and
    zero columns (what real scores have: unused edges, identical paths)."""
    rng = np.random.default_rng(seed)
    s = rng.standard_t(3, (N, graph.n_edges)).astype(np.float32) * 0.1
    s[:, rng.choice(graph.n_edges, 15, replace=False)] += rng.uniform(0.5, 2.0, 15).astype(np.float32)
    s[:, 5] = s[:, 6]  # a tie
    s[:, 7] = 0.0
    return s


def _write(values: np.ndarray, folder, budget: int, per_shard: int = 1, seed: int = 1) -> ScoreShards:
    """``values`` through a ShardWriter (``per_shard`` inputs a shard; column blocks of ``budget``
    bytes), batches of 1–5 inputs in a shuffled order."""
    n, e = values.shape
    writer = ShardWriter(folder, n, e, 0.0, shard_bytes=per_shard * 4 * e, budget=budget)
    order = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum(np.random.default_rng(seed).integers(1, 6, n))
    for rows in np.split(order, cuts[cuts < n]):
        writer.put(rows, values[rows])
    return writer.finish()


def _pair(graph, values, tmp_path, budget):
    memory = mv.Scores(values, graph, "edge", "planted")
    disk = mv.Scores(_write(values, tmp_path / "shards", budget, per_shard=2), graph, "edge", "planted")
    return memory, disk


def test_shards_read_back_what_was_written(tmp_path):
    values = np.random.default_rng(0).normal(size=(13, 37)).astype(np.float32)
    x = _write(values, tmp_path / "s", budget=4 * 13 * 5, per_shard=3)  # blocks of 5 columns
    assert len(x.files) == 5 and x.shape == (13, 37)
    np.testing.assert_array_equal(np.asarray(x), values)
    blocks = list(x.column_blocks())
    assert [b.shape[1] for _, b in blocks] == [5] * 7 + [2]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks], axis=1), values)
    cols = np.array([36, 0, 17, 17])
    np.testing.assert_array_equal(x[:, cols], values[:, cols])
    np.testing.assert_array_equal(x[:, 3:30:4], values[:, 3:30:4])
    rows = np.array([12, 0, 5])
    view = x[rows]  # lazy: a view of three inputs
    assert isinstance(view, ScoreShards) and view.shape == (3, 37)
    np.testing.assert_array_equal(view[:, cols], values[rows][:, cols])
    np.testing.assert_array_equal(x[2:9:3][1:][:, 4:6], values[2:9:3][1:][:, 4:6])
    np.testing.assert_array_equal(x[values[:, 0] > 0].read(), values[values[:, 0] > 0])


def test_writer_and_reader_refuse_what_is_not_whole(tmp_path):
    w = ShardWriter(tmp_path / "a", 4, 3, 0.0, shard_bytes=12, budget=64)
    w.put([0, 1], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="2 of 4 inputs were never scored"):
        w.finish()
    with pytest.raises(ValueError, match="must be \\[1, 3\\]"):
        w.put([2], np.zeros((1, 4)))
    for sink in (ShardWriter(tmp_path / "b", 2, 3, 0.0, shard_bytes=12, budget=64), ArraySink(3, 3, 0.0)):
        sink.put([0], np.zeros((1, 3)))
        with pytest.raises(ValueError, match="inputs \\[0\\] were put twice"):
            sink.put([0], np.zeros((1, 3)))
        with pytest.raises(ValueError, match="inputs \\[1\\] were put twice"):
            sink.put([1, 1], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="do not hold each input exactly once"):  # shards of another writer
        ScoreShards(2 * [os.path.join(tmp_path, "b", "shard-00000.safetensors")], 3, 64)
    sink = ArraySink(2, 3, np.nan, check=lambda rows, v: (_ for _ in ()).throw(FloatingPointError("vetted")))
    with pytest.raises(FloatingPointError, match="vetted"):
        sink.put([0], np.zeros((1, 3)))


def test_every_consumer_gives_on_disk_what_it_gives_in_memory(gpt2, tmp_path):
    graph = gpt2.graph
    values = _planted(graph)
    budget = 4 * N * 16  # column blocks of 16 edges
    memory, disk = _pair(graph, values, tmp_path, budget)
    assert len(disk.per_input.files) == N // 2 and len(list(disk.per_input.column_blocks())) == 7
    for how in AGGREGATIONS:  # exact sums and sorts: the same bits
        np.testing.assert_array_equal(mv.aggregate(disk, how), mv.aggregate(memory, how), err_msg=how)
    w = np.random.default_rng(2).integers(0, 4, N)
    np.testing.assert_array_equal(mv.aggregate(disk, "mean", w), mv.aggregate(memory, "mean", w))
    for n in (5, 30):
        a, b = mv.circuits.select(memory, n), mv.circuits.select(disk, n)
        np.testing.assert_array_equal(a.edges, b.edges)
    va, vb = stats.edge_variability(memory), stats.edge_variability(disk)
    for field in ("mean", "std", "cv", "snr", "sign_agreement", "quantiles", "n_needed"):
        np.testing.assert_allclose(getattr(vb, field), getattr(va, field), rtol=1e-6, err_msg=field)
    np.testing.assert_array_equal(vb.quantiles, va.quantiles)  # sorts: exact
    np.testing.assert_array_equal(memory[3:9].per_input, np.asarray(disk[3:9].per_input))

    key = jax.random.key(4)
    for method, how in (("multinomial", "mean"), ("multinomial", "median"), ("subsample", "mean-abs"),
                        ("disjoint-splits", "mean")):  # fmt: skip
        B = 4 if method == "disjoint-splits" else 40
        a = stats.bootstrap(memory, B, 20, aggregation=how, key=key, method=method)
        b = stats.bootstrap(disk, B, 20, aggregation=how, key=key, method=method)
        for field in ("aggregated", "full_aggregate", "circuits", "nodes", "full_circuit", "majority_circuit",
                      "jaccard", "node_jaccard", "inclusion_frequency", "sizes", "cut_ties"):  # fmt: skip
            np.testing.assert_array_equal(getattr(b, field), getattr(a, field), err_msg=(method, how, field))
        assert repr(b.summary()) == repr(a.summary()), (method, how)  # repr: NaN equals NaN
        for field in ("score_ci_percentile", "score_ci_bca"):
            if getattr(a, field) is None:
                assert getattr(b, field) is None
            else:  # BCa levels come from jackknife sums (float)
                np.testing.assert_allclose(getattr(b, field), getattr(a, field), rtol=1e-5, atol=1e-7)
        if method == "multinomial":  # percentile intervals: order statistics of exact aggregates
            np.testing.assert_array_equal(b.score_ci_percentile, a.score_ci_percentile)
    pa = stats.prompts_needed(memory, 20, key=key, n_replicates=20)
    pb = stats.prompts_needed(disk, 20, key=key, n_replicates=20)
    assert pa.summary() == pb.summary()


@pytest.mark.parametrize("method", ["exact", "eap-ig-inputs"])
def test_attribute_writes_shards_as_inputs_finish(gpt2, tmp_path, method):
    data = mv.tasks.make("ioi", gpt2, n=6, seed=0)
    kw = dict(steps=2, batch_size=2, progress=False)
    memory = mv.attribute(gpt2, data, method, **kw)
    small = 4 * len(data) * gpt2.graph.n_edges // 3  # a third of the scores: shards of a twelfth
    with pytest.raises(ValueError, match="pass scores_dir= to write them to disk"):
        mv.attribute(gpt2, data, method, scores_memory=small, **kw)
    disk = mv.attribute(gpt2, data, method, scores_memory=small, scores_dir=tmp_path / "s", **kw)
    assert isinstance(disk.per_input, ScoreShards) and len(disk.per_input.files) >= 3
    np.testing.assert_array_equal(np.asarray(disk.per_input), memory.per_input)
    np.testing.assert_array_equal(disk.clean_metric, memory.clean_metric)

    disk.save(tmp_path / "scores.safetensors")  # the file lists the shards, relative to itself
    shutil.move(tmp_path, tmp_path.parent / f"{tmp_path.name}-moved")
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    back = mv.Scores.load(moved / "scores.safetensors")
    assert isinstance(back.per_input, ScoreShards)
    np.testing.assert_array_equal(np.asarray(back.per_input), memory.per_input)
    np.testing.assert_array_equal(back.uid, memory.uid)
    back[[4, 1]].save(moved / "view.safetensors")  # a view keeps its inputs
    np.testing.assert_array_equal(np.asarray(mv.Scores.load(moved / "view.safetensors").per_input),
                                  memory.per_input[[4, 1]])  # fmt: skip
    os.remove(back.per_input.files[1])
    with pytest.raises(ValueError, match="1 of its .* score shards are missing"):
        mv.Scores.load(moved / "scores.safetensors")


def test_scores_on_disk_refuse_nan_as_they_are_written(gpt2, tmp_path):
    values = _planted(gpt2.graph)
    values[3, 11] = np.nan
    from mivar_jax.estimators.attribute import _sink

    sink = _sink(N, gpt2.graph.n_edges, None, gpt2.graph.edge_names, tmp_path, 1024)
    sink.put(np.arange(3), values[:3])
    with pytest.raises(FloatingPointError, match=f"input 3 × {gpt2.graph.edge_names[11]}"):
        sink.put(np.arange(3, 6), values[3:6])
