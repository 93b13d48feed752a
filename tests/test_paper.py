"""The paper preset (issue 17): one-at-a-time designs, the reference's top-k edges, the preset's
configs, ``mivar run paper --scale small`` end to end on a tiny random GPT-2 with its findings
recomputed from the run's own files by brute force, resume and report of a paper run, and the
reproduction notebook executed on the run."""

from __future__ import annotations

import itertools
import os
import shutil
import tomllib

import numpy as np
import pytest
from typer.testing import CliRunner

from mivar_jax.cli import app
from mivar_jax.scores import Scores
from mivar_jax.study import ConfigError, RunDir, paper
from mivar_jax.study.rundir import read_json
from tests.test_study import tiny_config

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "notebooks", "paper_reproduction.ipynb")


def test_one_at_a_time_design_varies_one_factor_per_cell():
    levels = {
        "data": {"seeds": [4, 1, 2], "families": ["transfer", "communication"], "counterfactuals": ["abb", "abc"],
                 "noise": [0.0, 0.5]},
        "estimator": {"methods": ["eap-ig-inputs", "eap"], "steps": [2, 3]},
    }  # fmt: skip
    oat = tiny_config("m", design="one-at-a-time", **levels)
    full = tiny_config("m", **levels)
    factors = oat.factors()
    assert len(full.cells()) == np.prod([len(v) for v in factors.values()]) == 72
    cells = oat.cells()
    base = cells[0]
    assert base.levels == {f: v[0] for f, v in factors.items()}  # every factor at its first level
    changed = [[f for f in factors if c.levels[f] != base.levels[f]] for c in cells[1:]]
    assert all(len(d) == 1 for d in changed)  # exactly one factor differs from the base
    seen = sorted((d[0], c.levels[d[0]]) for d, c in zip(changed, cells[1:], strict=True))
    expected = sorted((f, v) for f, vs in factors.items() for v in vs[1:])
    assert seen == expected and len(cells) == 1 + sum(len(v) - 1 for v in factors.values()) == 8
    assert {c.id for c in cells} < {c.id for c in full.cells()}
    # IG steps vary on the first stepped method only: other methods at other steps would change two factors
    three = {**levels, "estimator": {"methods": ["eap", "eap-ig-inputs", "ceap"], "steps": [2, 3]}}
    oat, full = tiny_config("m", design="one-at-a-time", **three), tiny_config("m", **three)
    assert oat.factors()["estimator"] == ["eap", "eap-ig-inputs-m2", "eap-ig-inputs-m3", "ceap-m2"]
    assert full.factors()["estimator"] == ["eap", "eap-ig-inputs-m2", "eap-ig-inputs-m3", "ceap-m2", "ceap-m3"]
    assert [c.estimator for c in oat.cells()[-3:]] == ["eap-ig-inputs-m2", "eap-ig-inputs-m3", "ceap-m2"]
    with pytest.raises(ConfigError, match="design = 'latin' is not allowed"):
        tiny_config("m", design="latin")
    with pytest.raises(ConfigError, match="reference.top_k = -1 is impossible"):
        tiny_config("m", reference={"top_k": -1})


def test_reference_edges_random_all_or_none():
    from mivar_jax.study import Study

    cfg = tiny_config("m", reference={"edges": 5, "top_k": 0})
    subset, top = Study(cfg).reference_edges(None, 110)  # no top-k: the run directory is not read
    assert top.size == 0 and subset.tolist() == sorted(np.random.default_rng(cfg.seed).choice(110, 5, False).tolist())
    subset, top = Study(tiny_config("m", reference={"edges": -1})).reference_edges(None, 110)
    assert subset.tolist() == list(range(110)) and top.size == 0
    assert Study(tiny_config("m", reference={"edges": 0})).reference_edges(None, 110)[0].size == 0


def test_the_preset_resolves_per_task_and_scale():
    text = paper.preset_text()
    assert tomllib.loads(text)["tasks"] == ["ioi", "sva", "greater-than"]
    r = CliRunner().invoke(app, ["show-default", "paper"])
    assert r.exit_code == 0 and r.stdout == text
    small, full = paper.paper_configs(scale="small"), paper.paper_configs("some/dir", scale="paper")
    for task in ("ioi", "sva", "greater-than"):
        s, f = small[task], full[task]
        assert s.data.task == f.data.task == task and s.design == f.design == "one-at-a-time"
        assert s.model.source == "smollm2-135m" and f.model.source == "some/dir"
        assert s.data.n < f.data.n and s.bootstrap.replicates < f.bootstrap.replicates == 100
        assert len(s.cells()) < len(f.cells())
    assert small["ioi"].data.counterfactuals == ("abc", "abb") and small["sva"].data.counterfactuals == ()
    with pytest.raises(ConfigError, match="scale = 'huge' is not allowed"):
        paper.paper_configs(scale="huge")


@pytest.fixture(scope="module")
def paper_run(hf_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("paper") / "run"
    r = CliRunner().invoke(app, ["run", "paper", "--model", hf_dirs["gpt2"][0], "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output[-3000:]
    assert "ioi: top-100 circuit error" in r.stdout and "findings.md" in r.stdout
    return str(out)


def _circuits(rd: RunDir, cell_id: str, size_index: int) -> np.ndarray:
    with np.load(os.path.join(rd.cell_dir(cell_id), "circuits.npz")) as z:
        return np.unpackbits(z["full_packed"], axis=-1, count=int(z["n_edges"])).astype(bool)[0, size_index]


def _jaccard(a, b) -> float:
    return (a & b).sum() / (a | b).sum()


def test_paper_run_findings_recomputed_from_the_run_files(paper_run):
    found = read_json(os.path.join(paper_run, "paper.json"))
    assert found["scale"] == "small" and list(found["tasks"]) == ["ioi", "sva", "greater-than"]
    for task, t in found["tasks"].items():
        rd = RunDir.open(os.path.join(paper_run, task))
        cfg, cells = rd.config, rd.config.cells()
        assert cfg.data.task == task and t["base_cell"] == cells[0].id
        # the headline is the base cell's summary row at the headline size
        rows = read_json(rd.file("results", "summary.json"))
        row = next(r for r in rows if r["cell"] == cells[0].id and r["size"] == cfg.bootstrap.size
                   and r["aggregation"] == cfg.circuits.aggregations[0])  # fmt: skip
        assert t["headline"]["mean_jaccard"] == row["mean_jaccard"]
        assert t["headline"]["circuit_error"] == row["circuit_error_task"] and row["eval_set"] == "held-out"
        assert t["headline"]["verdict"] == "undetermined"  # B = 20 < 100
        # Jaccard of every perturbed cell's circuit to the base circuit, and EAP-IG vs clean-corrupted
        s = cfg.circuits.sizes.index(cfg.bootstrap.size)
        base = _circuits(rd, cells[0].id, s)
        for c, r in zip(cells[1:], t["jaccard_to_base"], strict=True):
            assert r["cell"] == c.id and r["jaccard_to_base"] == pytest.approx(_jaccard(base, _circuits(rd, c.id, s)))
        cc = next(c for c in cells if c.method == "clean-corrupted")
        assert t["eap_ig_vs_clean_corrupted"] == pytest.approx(_jaccard(base, _circuits(rd, cc.id, s)))
        # the reference's edges: each estimator's top-k on the base dataset, plus random ones
        ref = rd.cell_dir("reference")
        top, subset = np.load(os.path.join(ref, "edge-top.npy")), np.load(os.path.join(ref, "edge-subset.npy"))
        expected = set()
        for c in (c for c in cells if c.dataset == cells[0].dataset):
            scores = Scores.load(os.path.join(rd.cell_dir(c.id), "scores.safetensors"))
            mean = np.asarray(scores.per_input, np.float64).mean(0)
            strength = np.sort(np.abs(mean))[::-1]
            assert strength[cfg.reference.top_k - 1] > strength[cfg.reference.top_k]  # no tie at the cut here
            expected |= set(np.flatnonzero(np.abs(mean) >= strength[cfg.reference.top_k - 1]).tolist())
        assert set(top.tolist()) == expected and set(top.tolist()) <= set(subset.tolist())
        random = np.random.default_rng(cfg.seed).choice(scores.n_items, cfg.reference.edges, replace=False)
        assert sorted(subset.tolist()) == sorted(set(top.tolist()) | set(random.tolist()))
        # intrinsic variance of the exact scores, by numpy
        exact = np.asarray(Scores.load(os.path.join(ref, "exact-edge.safetensors")).per_input, np.float64)
        x = exact[:, top]
        m, sd = x.mean(0), x.std(0, ddof=1)
        keep = m != 0
        snr = np.abs(m[keep]) / sd[keep]
        assert t["intrinsic"]["top"]["snr_median"] == pytest.approx(np.median(snr), rel=1e-4)
        agree = (np.sign(x[:, keep]) == np.sign(m[keep])).mean(0)
        assert t["intrinsic"]["top"]["sign_agreement_median"] == pytest.approx(np.median(agree))
        # estimator noise at edge level for each estimator of the base dataset
        assert set(t["estimator_noise"]) == {c.estimator for c in cells if c.dataset == cells[0].dataset}
        # membership variance: between the levels of each factor vs bootstrap replicates, shares sum to 1
        assert {"all cells", "seed", "family", "noise", "estimator"} <= set(t["membership_variance"])
        for shares in t["membership_variance"].values():
            assert sum(shares.values()) == pytest.approx(1.0)
        aggs = cfg.circuits.aggregations
        assert [r["aggregation"] for r in t["hyperparameters"]["sweep"]] == [
            a for a in aggs for _ in cfg.circuits.sizes
        ]
        assert list(t["hyperparameters"]["across_aggregations"]) == [
            f"{a} vs {b}" for a, b in itertools.combinations(aggs, 2)
        ]
        base_rows = [r for r in rows if r["cell"] == cells[0].id]
        for r, b in zip(t["hyperparameters"]["sweep"], base_rows, strict=True):  # the base cell's summary rows
            assert (r["size"], r["mean_jaccard"], r["faithfulness"]) == (
                b["size"],
                b["mean_jaccard"],
                b["faithfulness"],
            )
    assert "counterfactual" in found["tasks"]["ioi"]["membership_variance"]
    with open(os.path.join(paper_run, "findings.md")) as f:
        text = f.read()
    for needle in ("| sva |", "| greater-than |", "gpt2-small (paper)", "0.67", "Jaccard to base"):
        assert needle in text


def test_paper_run_resumes_and_reports(paper_run, tmp_path, hf_dirs):
    out = tmp_path / "run"
    shutil.copytree(paper_run, out)
    before = read_json(os.path.join(out, "paper.json"))
    rd = RunDir.open(out / "greater-than")  # interrupted before its reference cell
    shutil.rmtree(rd.cell_dir("reference"))
    rd.set_status("running")
    os.remove(out / "paper.json")
    sva = RunDir.open(out / "sva")  # a finished task damaged since: its cell is recomputed
    damaged = sva.config.cells()[1].id
    with open(os.path.join(sva.cell_dir(damaged), "circuits.npz"), "r+b") as f:
        f.seek(100)
        f.write(b"\0" * 16)
    cli = CliRunner()
    r = cli.invoke(app, ["run", "--resume", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output[-3000:]
    assert "ioi: complete (from an earlier run)" in r.output and "sva: complete" not in r.output
    assert damaged in r.output and "damaged" in r.output
    n = len(rd.config.cells())
    assert f"{n + 1} cells, {n} already complete" in r.output  # greater-than: its cells kept, the reference recomputed
    after = read_json(os.path.join(out, "paper.json"))
    strip = lambda d: {t: {k: v for k, v in x.items() if k != "seconds"} for t, x in d["tasks"].items()}
    assert strip(after) == strip(before)
    r = cli.invoke(app, ["report", str(out)])
    assert r.exit_code == 0 and "greater-than: top-100" in r.stdout
    assert strip(read_json(os.path.join(out, "paper.json"))) == strip(before)
    # a task directory left without its manifest (interrupted while created) is named, not guessed at
    shutil.rmtree(out / "ioi")
    os.makedirs(out / "ioi" / "cells")
    r = cli.invoke(app, ["run", "--resume", str(out)])
    assert r.exit_code == 2 and "exists without a manifest.json" in r.output
    r = cli.invoke(app, ["run", "study.toml", "--resume", str(out)])
    assert r.exit_code == 2 and "resume it without a study file" in r.output
    # bad input: one line, nothing left behind
    r = cli.invoke(app, ["run", "paper", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "new")])
    assert r.exit_code == 2 and "model.source" in r.output and not os.path.exists(tmp_path / "new")
    r = cli.invoke(app, ["run", "paper", "--model", hf_dirs["gpt2"][0], "--out", str(out)])
    assert r.exit_code == 2 and "exists and is not empty" in r.output
    r = cli.invoke(app, ["run", "paper", "--scale", "huge", "--out", str(tmp_path / "new")])
    assert r.exit_code == 2 and "scale = 'huge'" in r.output and not os.path.exists(tmp_path / "new")
    study = tmp_path / "s.toml"
    study.write_text('name = "x"\n')
    r = cli.invoke(app, ["run", str(study), "--scale", "paper"])
    assert r.exit_code == 2 and "apply to the paper preset" in r.output


def test_a_new_run_may_go_into_an_existing_empty_directory(hf_dirs, tmp_path, monkeypatch):
    from mivar_jax.study import runner

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(runner.Study, "run", stop)  # no study: only the checks and the preset file
    os.makedirs(tmp_path / "empty")
    with pytest.raises(Stop):
        paper.run_paper(tmp_path / "empty", model=hf_dirs["gpt2"][0], progress=False)
    assert read_json(str(tmp_path / "empty" / "preset.json"))["model"] == hf_dirs["gpt2"][0]


def test_the_reproduction_notebook_runs_on_the_small_run(paper_run, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("MIVAR_PAPER_RUN", os.path.abspath(paper_run))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()  # fmt: skip
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # intrinsic, estimator noise, bootstrap, perturbations, hyperparameters
    found = read_json(os.path.join(paper_run, "paper.json"))
    for task, t in found["tasks"].items():
        assert f"{task}: top-{t['size']} circuit, mean pairwise Jaccard {t['headline']['mean_jaccard']:.3f}" in text
    for needle in ("intrinsic variance of top edges", "median Spearman to exact", "EAP-IG-inputs vs clean-corrupted",
                   "membership variance across", "gpt2-small (paper)"):  # fmt: skip
        assert needle in text


def test_compare_paper_runs_task_by_task(paper_run, tmp_path):
    """``mivar compare`` of two paper runs sets their tasks' runs side by side and compares circuits
    of the same task only (here a run against its copy: every cell against its twin, Jaccard 1)."""
    copy = tmp_path / "copy"
    shutil.copytree(paper_run, copy)
    r = CliRunner().invoke(app, ["compare", paper_run, str(copy), "--out", str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "cmp" / "compare.html").read_text(encoding="utf-8")
    tasks = [RunDir.open(t) for t in paper.task_dirs(paper_run)]
    head, _, overlap = text.partition("<h2>Jaccard between the runs' circuits</h2>")
    headline = head.split("<h2>Headline circuits side by side</h2>")[1].split("</table>")[0]
    assert headline.count("<tr>") == 1 + 2 * sum(len(t.config.cells()) for t in tasks)
    rows = overlap.split("</table>")[0].split("<tr>")[2:]  # after the header row
    assert len(rows) == sum(len(t.config.cells()) for t in tasks)  # same-task pairs only
    assert all("<td class='num'>1.000</td>" in row for row in rows)
    for t in tasks:  # each task's pairs name that task's run twice
        assert sum(t.config.name in row for row in rows) == len(t.config.cells())
