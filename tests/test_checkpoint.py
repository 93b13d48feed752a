"""An interrupted scoring job resumes from its checkpoint: the batches it finished are read back,
only the others are computed, and the scores are the bits an uninterrupted job gives (the batches
are the same, so nothing depends on where it stopped)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import mivar_jax as mv
from mivar_jax._shards import Checkpoint, ScoreShards

N = 10
_SAVE = Checkpoint.save


@pytest.fixture(scope="module")
def setup(hf_dirs):
    model = mv.load_model(hf_dirs["gpt2"][0])
    return model, mv.tasks.make("ioi", model, n=N, seed=0)


def _spy_saves(monkeypatch, stop_after: int | None = None) -> list:
    """Count ``Checkpoint.save`` calls; with ``stop_after``, raise after that many (an interruption
    right after a batch was saved)."""
    saved = []

    def save(self, rows, values, clean):
        _SAVE(self, rows, values, clean)
        saved.append(np.asarray(rows).tolist())
        if stop_after is not None and len(saved) == stop_after:
            raise KeyboardInterrupt("interrupted")

    monkeypatch.setattr(Checkpoint, "save", save)
    return saved


CASES = {  # name: attribute's keyword arguments (batch_size 3: four batches of the ten inputs)
    "dense": {"method": "eap-ig-activations", "steps": 2},
    "exact edges": {"method": "exact", "subset": 7},  # every 7th edge
    "exact nodes": {"method": "exact", "level": "node"},
    "on disk": {"method": "eap-ig-inputs", "steps": 2, "scores_memory": 4096},
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_interrupted_job_resumes_and_gives_the_uninterrupted_scores(setup, tmp_path, monkeypatch, case):
    model, data = setup
    kw = {"batch_size": 3, "progress": False, **CASES[case]}
    if "subset" in kw:
        kw["subset"] = np.arange(0, model.graph.n_edges, kw["subset"])
    if "scores_memory" in kw:
        kw["scores_dir"] = tmp_path / "shards"
    whole = mv.attribute(model, data, **kw)
    folder = tmp_path / "checkpoint"
    every = _spy_saves(monkeypatch)
    np.testing.assert_array_equal(
        mv.attribute(model, data, checkpoint=tmp_path / "c0", **kw).per_input, whole.per_input
    )
    assert len(every) >= 4 and not (tmp_path / "c0").exists()

    first = _spy_saves(monkeypatch, stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        mv.attribute(model, data, checkpoint=folder, **kw)
    assert len(first) == 2 and len(os.listdir(folder)) == 3  # job.json and two batches

    then = _spy_saves(monkeypatch)
    resumed = mv.attribute(model, data, checkpoint=folder, **kw)
    assert then == every[2:]  # only the batches the first call did not finish
    assert sorted(sum(first + then, [])) == list(range(N))
    assert resumed.params["resumed_inputs"] == len(sum(first, []))
    assert not folder.exists()  # removed once the scores are whole
    assert isinstance(resumed.per_input, ScoreShards) == ("scores_memory" in kw)
    np.testing.assert_array_equal(np.asarray(resumed.per_input), np.asarray(whole.per_input))
    np.testing.assert_array_equal(resumed.clean_metric, whole.clean_metric)
    assert np.isfinite(whole.clean_metric).all() and np.abs(whole.clean_metric).min() > 0


def test_a_checkpoint_of_another_job_is_cleared_not_used(setup, hf_dirs, tmp_path, monkeypatch):
    model, data = setup
    untied = mv.load_model(hf_dirs["gpt2-untied"][0])  # the same graph, other weights
    assert untied.graph.config_dict() == model.graph.config_dict()
    folder = tmp_path / "checkpoint"
    _spy_saves(monkeypatch, stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        mv.attribute(model, data, "eap-ig-inputs", steps=2, batch_size=3, checkpoint=folder, progress=False)
    for other in (  # another step count, other inputs, other weights, another batching: each starts afresh
        {"steps": 3, "batch_size": 3, "data": data, "model": model},
        {"steps": 2, "batch_size": 3, "data": mv.tasks.make("ioi", model, n=N, seed=1), "model": model},
        {"steps": 2, "batch_size": 3, "data": data, "model": untied},
        {"steps": 2, "batch_size": 4, "data": data, "model": model},
    ):
        saved = _spy_saves(monkeypatch, stop_after=1)
        with pytest.raises(KeyboardInterrupt):
            mv.attribute(other["model"], other["data"], "eap-ig-inputs", steps=other["steps"],
                         batch_size=other["batch_size"], checkpoint=folder, progress=False)  # fmt: skip
        assert len(saved) == 1 and len([f for f in os.listdir(folder) if f.startswith("batch-")]) == 1
    saved = _spy_saves(monkeypatch)
    again = mv.attribute(model, data, "eap-ig-inputs", steps=2, batch_size=4, checkpoint=folder, progress=False)
    assert len(saved) == 2 and "resumed_inputs" in again.params  # resumed 1 of 3 batches of the last job
    fresh = mv.attribute(model, data, "eap-ig-inputs", steps=2, batch_size=4, progress=False)
    np.testing.assert_array_equal(again.per_input, fresh.per_input)
