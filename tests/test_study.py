"""Studies end to end on a tiny random GPT-2 (written by transformers): config validation, the run
directory against direct library calls, resume after kill -9 between and inside cells (killed runs
on 8 forced CPU devices, identical to one device), the report, and the ``mivar`` command."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import tomllib
import zlib
from pathlib import Path

import jax
import matplotlib.image as mpimg
import numpy as np
import pytest
from typer.testing import CliRunner

import mivar_jax as mv
from mivar_jax.circuits.selection import topn
from mivar_jax.cli import app
from mivar_jax.study import ConfigError, RunDir, RunDirError, Study, StudyConfig, default_config
from mivar_jax.study import runner as runner_module


def tiny_config(source: str, **sections) -> StudyConfig:
    d = {
        "name": "tiny",
        "seed": 3,
        "model": {"source": source},
        "data": {
            "task": "ioi",
            "n": 8,
            "seeds": [0, 1],
            "families": ["transfer"],
            "counterfactuals": ["abc"],
            "holdout": 5,
        },
        "estimator": {"methods": ["eap-ig-inputs"], "steps": [2], "batch_size": 4},
        "circuits": {"sizes": [6, 20], "eval_inputs": 4},
        "bootstrap": {"replicates": 16, "size": 20},
        "stability": {
            "curve": True,
            "faithfulness": [0.3, 0.6],
            "faithfulness_replicates": 4,
            "faithfulness_sizes": [6, 20, 60],
        },  # fmt: skip
        "reference": {"level": "node", "inputs": 3, "edges": 8},
    }
    for k, v in sections.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) else v
    return StudyConfig.from_dict(d)


@pytest.fixture(scope="module")
def tiny_study(hf_dirs, tmp_path_factory):
    cfg = tiny_config(hf_dirs["gpt2"][0])
    out = tmp_path_factory.mktemp("study") / "run"
    results = Study(cfg).run(out, progress=False)
    return cfg, str(out), results


# ------------------------------------------------------------------------------------ config
def test_config_errors_name_the_key_and_the_allowed_values():
    cases = [
        ({"data": {"nn": 3}}, "unknown key 'data.nn'.*allowed keys in \\[data\\]"),
        ({"colour": 1}, "unknown key 'colour'"),
        ({"data": {"n": "many"}}, "data.n must be an integer, got str"),
        ({"data": {"seeds": 0}}, "data.seeds must be a list of integers"),
        (
            {"data": {"task": "sentiment"}},
            "data.task = 'sentiment' is not allowed; choose from \\['greater-than', 'ioi', 'sva'\\]",
        ),
        ({"data": {"families": ["transfer", "poetry"]}}, "data.families = 'poetry'.*'communication'"),
        ({"data": {"counterfactuals": ["abc", "abc"]}}, "lists a value twice"),
        ({"estimator": {"methods": ["eap-ig"]}}, "estimator.methods = 'eap-ig' is not allowed; choose from \\['eap'"),
        ({"estimator": {"methods": ["exact"]}}, "estimator.methods: 'exact'.*\\[reference\\]"),
        ({"estimator": {"steps": [0]}}, "estimator.steps = 0 is impossible; it must be ≥ 1"),
        ({"bootstrap": {"replicates": 1}}, "bootstrap.replicates = 1 is impossible"),
        ({"bootstrap": {"size": 7}}, "bootstrap.size = 7 is not allowed; choose from \\[25, 50, 100, 200\\]"),
        ({"bootstrap": {"confidence": 1.5}}, "bootstrap.confidence = 1.5 is impossible"),
        ({"circuits": {"aggregations": ["mode"]}}, "circuits.aggregations = 'mode'.*'median'"),
        ({"reference": {"inputs": 1}}, "reference.inputs = 1 is impossible"),
        ({"model": {"dtype": "int8"}}, "model.dtype = 'int8' is not allowed"),
        ({"data": 3}, "data must be a table"),
        ({"data": {"prepend_bos": "yes"}}, "data.prepend_bos must be a boolean"),
        ({"data": {"noise": [0.0, float("nan")]}}, "data.noise\\[1\\] = nan is not a finite number"),
        ({"data": {"noise": [float("inf")]}}, "data.noise\\[0\\] = inf is not a finite number"),
        ({"bootstrap": {"confidence": float("nan")}}, "bootstrap.confidence = nan is not a finite number"),
        ({"estimator": {"pooling": "sum"}}, "estimator.pooling = 'sum' is not allowed; choose from \\[.*'source'"),
    ]
    for d, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            StudyConfig.from_dict(d)


def test_config_files(tmp_path):
    c = default_config()
    assert StudyConfig.from_dict(tomllib.loads(c.to_toml())) == c
    assert c.estimator.pooling == "reference" and 'pooling = "reference"' in c.to_toml()
    path = tmp_path / "s.toml"
    path.write_text('name = "x"\n[data]\nn = 12\nfamilies = ["transfer"]\n')
    loaded = StudyConfig.from_file(path)
    assert loaded.data.n == 12 and loaded.data.families == ("transfer",) and loaded.bootstrap == c.bootstrap
    assert loaded.reference.inputs == 20  # more than data.n: the reference takes every input
    path.write_text("[data\nn = 1")
    with pytest.raises(ConfigError, match="s.toml: not valid TOML"):
        StudyConfig.from_file(path)
    path.write_text("[bootstrap]\nmethod = 'jackknife'\n")
    with pytest.raises(ConfigError, match="s.toml: bootstrap.method = 'jackknife' is not allowed"):
        StudyConfig.from_file(path)
    with pytest.raises(ConfigError, match="cannot read study file"):
        StudyConfig.from_file(tmp_path / "missing.toml")
    full = StudyConfig.from_file(os.path.join(os.path.dirname(__file__), "..", "examples", "stability-full.toml"))
    assert full.stability.faithfulness == (0.5, 0.8, 0.9) and full.data.holdout == 100
    masks = StudyConfig.from_file(os.path.join(os.path.dirname(__file__), "..", "examples", "masks-smollm2-ioi.toml"))
    assert [c.method for c in masks.cells()] == ["edge-pruning"] and masks.masks.steps == 250
    for bad, match in (
        ("[stability]\nfaithfulness = [1.5]\n", "stability.faithfulness = 1.5 is impossible"),
        ("[data]\nholdout = -1\n", "data.holdout = -1 is impossible"),
        ("[stability]\nfaithfulness_replicates = 1\n", "stability.faithfulness_replicates = 1 is impossible"),
        ("[stability]\nfaithfulness_sizes = [40, 20]\n", "must increase"),
    ):
        path.write_text(bad)
        with pytest.raises(ConfigError, match=match):
            StudyConfig.from_file(path)


def test_grid_is_the_product_of_the_perturbations():
    c = StudyConfig.from_dict(
        {
            "data": {"seeds": [0, 1], "families": ["transfer", "communication"], "counterfactuals": ["abc", "abb"],
                     "noise": [0.0, 0.5]},
            "estimator": {"methods": ["eap", "eap-ig-inputs"], "steps": [3, 5]},
        }
    )  # fmt: skip
    cells = c.cells()
    assert len(cells) == 2 * 2 * 2 * 2 * 3  # eap has no steps: 3 estimators
    assert len({x.id for x in cells}) == len(cells)
    assert [len(v) for v in c.factors().values()] == [2, 2, 2, 2, 3]
    assert {x.estimator for x in cells} == {"eap", "eap-ig-inputs-m3", "eap-ig-inputs-m5"}


# ------------------------------------------------------------------------------------ a run
def _load(path):
    return mv.Scores.load(path)


def _text(path) -> str:
    return Path(path).read_text()


def _count_attribute_calls(monkeypatch) -> list:
    """Spy on the runner's ``attribute``: the returned list fills with (method, level) per call."""
    calls = []
    real = runner_module.attribute

    def counting(model, data, method, **kw):
        calls.append((method, kw.get("level")))
        return real(model, data, method, **kw)

    monkeypatch.setattr(runner_module, "attribute", counting)
    return calls


def _json(path):
    return json.loads(_text(path))


def test_run_directory_against_direct_library_calls(tiny_study, hf_dirs):
    cfg, out, results = tiny_study
    rd = RunDir.open(out)
    assert rd.manifest["status"] == "complete" and rd.config == cfg
    assert tomllib.loads(_text(rd.file("config.toml")))["data"]["n"] == 8
    env = _json(rd.file("environment.json"))
    assert env["packages"]["jax"] == jax.__version__ and env["device_count"] == jax.device_count()
    cells = cfg.cells()
    assert sorted(rd.done_cells()) == sorted([c.id for c in cells] + ["reference"])
    assert not os.path.exists(rd.file("cells", ".partial"))

    model = mv.load_model(hf_dirs["gpt2"][0])
    key = jax.random.key(cfg.seed)
    make = lambda seed: mv.tasks.make("ioi", model, 8 + 5, seed, templates="transfer", counterfactual="abc")
    width = max(make(c.seed).n_positions for c in cells)  # the runner computes every dataset at the study's width
    for c in cells:
        folder = rd.cell_dir(c.id)
        data = mv.tasks.TaskData.load(rd.file("data", f"s{c.seed}-transfer-abc-n0.npz"))
        whole = make(c.seed)
        np.testing.assert_array_equal(data.clean, whole.clean)
        rows_of = lambda rows, whole=whole: whole[rows].pad(width)
        # 5 inputs held out of discovery: the first 5 of the study seed's permutation of the 13
        held = np.sort(np.random.default_rng([3, zlib.crc32(c.dataset.encode())]).permutation(13)[:5])
        discovery = np.setdiff1d(np.arange(13), held)
        direct = rows_of(discovery)
        scores = _load(os.path.join(folder, "scores.safetensors"))
        want = mv.attribute(model, direct, "eap-ig-inputs", steps=2, batch_size=4, progress=False)
        np.testing.assert_array_equal(scores.per_input, want.per_input)
        boots = _json(os.path.join(folder, "bootstrap.json"))
        assert [(b["aggregation"], b["size"]) for b in boots] == [("mean", 6), ("mean", 20)]
        with np.load(os.path.join(folder, "bootstrap.npz")) as z:
            for b in boots:
                r = mv.stats.bootstrap(want, 16, b["size"], key=key)
                assert b["mean_jaccard"] == pytest.approx(r.mean_jaccard) and b["verdict"] == r.verdict
                np.testing.assert_allclose(z[f"mean-n{b['size']}/jaccard"], r.jaccard, rtol=1e-6)
                np.testing.assert_allclose(z[f"mean-n{b['size']}/inclusion_frequency"], r.inclusion_frequency)
        # the headline circuit, in EAP-IG's JSON, is the bootstrap's full-data circuit
        r20 = mv.stats.bootstrap(want, 16, 20, key=key)
        circ = mv.Circuit.from_graph_json(os.path.join(folder, "circuits", "mean-n20.json"))
        np.testing.assert_array_equal(circ.edges, r20.full_circuit)
        # circuits are evaluated on the held-out inputs, and in sample on 4 random discovery inputs
        info = _json(os.path.join(folder, "cell.json"))
        rows = discovery[np.sort(np.random.default_rng([3, zlib.crc32(c.dataset.encode())]).permutation(8)[:4])]
        assert info["eval_inputs"] == rows.tolist() and c.dataset == f"s{c.seed}-transfer-abc-n0"
        assert info["held_out_inputs"] == held.tolist() and info["discovery_inputs"] == discovery.tolist()
        assert info["estimator_settings"] == {
            "method": "eap-ig-inputs", "steps": 2, "ablation": "patch", "ig_convention": "reference"
        }  # fmt: skip
        ev = _json(os.path.join(folder, "evaluation.json"))
        kinds = [(6, "full"), (20, "full"), (20, "majority")]
        assert [(e["inputs"], e["size"], e["circuit"]) for e in ev] == [("held-out", *k) for k in kinds] + [
            ("in-sample", *k) for k in kinds
        ]
        # one evaluation of every circuit (full ones at each size, then the majority one) on the
        # held-out and in-sample prompts, split by set, as the runner does; a circuit alone on one set
        # gives the same per-input metrics up to float reordering (other batches, windows and chunks)
        z = np.load(os.path.join(folder, "circuits.npz"))
        E = model.graph.n_edges
        full = np.unpackbits(z["full_packed"], axis=-1, count=E).astype(bool).reshape(-1, E)
        majority = np.unpackbits(z["majority_packed"], axis=-1, count=E).astype(bool)[:, -1]
        np.testing.assert_array_equal(full[1], circ.edges)  # sizes 6, 20: the headline is the second
        both = mv.evaluate(
            model, rows_of(np.concatenate([held, rows])), np.concatenate([full, majority]), progress=False
        )
        parts = {"held-out": both.on_inputs(slice(0, len(held))), "in-sample": both.on_inputs(slice(len(held), None))}
        for alone, name in ((whole[held], "held-out"), (whole[rows], "in-sample")):
            one = mv.evaluate(model, alone, circ, progress=False)
            np.testing.assert_allclose(one.metric, parts[name].metric[1], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(one.kl, parts[name].kl[1], rtol=1e-4, atol=1e-7)
            np.testing.assert_array_equal(one.agree_task, parts[name].agree_task[1])
        want_rows = parts["held-out"].summary() + parts["in-sample"].summary()
        for got, row in zip(ev, want_rows, strict=True):
            for k, v in row.items():
                assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-12), k
        assert [e["n_inputs"] for e in ev] == [5] * 3 + [4] * 3
        assert info["faithfulness_in_sample"] == ev[4]["faithfulness"] and info["faithfulness"] == ev[1]["faithfulness"]
        assert info["faithfulness_se"] == ev[1]["faithfulness_se"] and "±" in info["headline"]
        # the analyses past the paper, against the library's own calls
        for b in boots:
            sel = mv.stats.selection_noise(mv.stats.bootstrap(want, 16, b["size"], key=key))
            assert b["selection"]["implied_jaccard"] == pytest.approx(sel.implied_jaccard)
            assert b["selection"]["n_contested"] == sel.n_contested
        st = _json(os.path.join(folder, "stability.json"))
        pn = mv.stats.prompts_needed(want, 20, key=jax.random.fold_in(key, 1), n_replicates=16)
        assert st["prompts_needed"]["sizes"] == [2, 4, 8, 16, 32]  # N/4 … 4N
        assert st["prompts_needed"]["mean_jaccard"] == pytest.approx(pn.mean_jaccard.tolist())
        assert st["prompts_needed"]["n_needed"] == pn.n_needed
        curve = mv.evaluate_curve(model, rows_of(held), want, progress=False)
        assert st["curve"]["inputs"] == "held-out" and st["curve"]["cpr"] == pytest.approx(curve.cpr, rel=1e-5)
        ci = mv.stats.curve_intervals(curve, key=jax.random.fold_in(key, 2)).summary()
        assert st["curve"]["intervals"]["cmd"]["ci_bca"] == pytest.approx(ci["cmd"]["ci_bca"], rel=1e-4)
        grid = np.array([6, 20, 60])
        masks = np.stack(
            [np.asarray(mv.circuits.prune(model.graph, topn(r20.aggregated[:4], int(n))[0])[0]) for n in grid], 1
        )
        faith = np.asarray(mv.evaluate(model, rows_of(held), masks.reshape(12, -1), progress=False).faithfulness)
        for got, target in zip(st["faithfulness"]["targets"], (0.3, 0.6), strict=True):
            fs = mv.stats.faithful_stability(masks, faith.reshape(4, 3), grid, target, key=jax.random.fold_in(key, 3))
            assert (got["target"], got["n_reached"], got["size_median"]) == (target, fs.n_reached, fs.size_median)
            assert got["frontier_faithfulness"] == pytest.approx(fs.frontier_faithfulness.tolist(), rel=1e-5)
            assert got["mean_jaccard"] == pytest.approx(fs.mean_jaccard)
        header, *lines = _text(os.path.join(folder, "edges.csv")).splitlines()
        assert header.split(",")[:5] == ["edge", "mean", "std", "cv", "snr"] and len(lines) == model.graph.n_edges
        top = int(np.argmax(np.abs(want.per_input.mean(0))))
        first = lines[top].split(",")
        mean, std = want.per_input.mean(0)[top], want.per_input.std(0, ddof=1)[top]
        assert first[0] == model.graph.edge_names[top] and float(first[1]) == pytest.approx(float(mean), rel=1e-5)
        assert float(first[4]) == pytest.approx(abs(mean) / std, rel=1e-4)  # SNR next to the CV
        assert float(first[3]) == pytest.approx(std / abs(mean), rel=1e-4)
        # the median SNR of each full-data circuit's edges
        m, sd = np.abs(want.per_input.mean(0)), want.per_input.std(0, ddof=1)
        snr = np.where(sd > 0, m / np.where(sd > 0, sd, 1.0), np.where(m > 0, np.inf, 0.0))
        for r in info["circuits"]:
            f = mv.stats.bootstrap(want, 16, r["size"], key=key).full_circuit
            assert r["edges"] == f.sum()
            if f.any():
                assert r["snr_median"] == pytest.approx(float(np.median(snr[f])), rel=1e-4)
            else:
                assert r["snr_median"] is None  # an empty circuit has no median

    # study-level tables
    summary = _json(rd.file("results", "summary.json"))
    assert len(summary) == len(cells) * len(cfg.circuits.sizes)
    csv_lines = _text(rd.file("results", "summary.csv")).splitlines()
    assert len(csv_lines) == len(summary) + 1 and csv_lines[0].startswith("cell,label,seed")
    header = csv_lines[0].split(",")
    for col in ("jaccard_mc_low", "n_replicates", "n_empty", "replicates_with_cut_ties", "snr_median", "faithfulness_se",
                "circuit_error_task_se", "pooling", "eval_inputs"):  # fmt: skip
        assert col in header, col
    assert "jaccard_ci_low" not in header  # the interval is Monte-Carlo over replicates, and named so
    for r in summary:
        folder = rd.cell_dir(r["cell"])
        b = next(b for b in _json(os.path.join(folder, "bootstrap.json")) if b["size"] == r["size"])
        e = next(e for e in _json(os.path.join(folder, "evaluation.json")) if e["size"] == r["size"])
        info = _json(os.path.join(folder, "cell.json"))
        assert [r["jaccard_mc_low"], r["jaccard_mc_high"]] == b["jaccard_ci_percentile"]["mean_jaccard"]
        assert r["n_replicates"] == b["n_replicates"] == cfg.bootstrap.replicates
        assert r["jaccard_interval"] == "Monte-Carlo interval over the B replicates"
        assert (r["n_empty"], r["replicates_with_cut_ties"]) == (b["n_empty"], b["replicates_with_cut_ties"])
        assert r["faithfulness_se"] == e["faithfulness_se"] and r["circuit_error_task_se"] == e["circuit_error_task_se"]
        assert r["snr_median"] == next(x["snr_median"] for x in info["circuits"] if x["size"] == r["size"])
        assert r["eval_inputs"] == 5 and r["eval_set"] == "held-out" and r["pooling"] is None
        assert r["ig_convention"] == "reference"
        e_in = next(
            e
            for e in _json(os.path.join(folder, "evaluation.json"))
            if e["size"] == r["size"] and e["inputs"] == "in-sample"
        )
        assert (
            r["faithfulness_in_sample"] == e_in["faithfulness"]
            and r["implied_jaccard"] == b["selection"]["implied_jaccard"]
        )
    pert = _json(rd.file("results", "perturbations.json"))
    a, b = (mv.Circuit.from_graph_json(os.path.join(rd.cell_dir(c.id), "circuits", "mean-n20.json")) for c in cells)
    assert pert["mean_by_factor"]["seed"] == pytest.approx(a.jaccard(b))
    dec = _json(rd.file("results", "decomposition.json"))
    for name in ("aggregated_scores", "membership", "mean_jaccard", "faithfulness", "membership_nested"):
        assert "table" in dec[name], (name, dec[name])
        assert sum(r["ss_share"] for r in dec[name]["table"]) == pytest.approx(1.0, abs=1e-9)
    assert [r["effect"] for r in dec["membership"]["table"]] == ["seed", "size", "seed×size"]
    noise = _json(rd.file("results", "estimator_noise.json"))
    ref = rd.cell_dir("reference")
    x = _load(os.path.join(ref, "exact-node.safetensors"))
    order = lambda n: np.random.default_rng([3, zlib.crc32(b"s0-transfer-abc-n0")]).permutation(n)
    discovery0 = np.setdiff1d(np.arange(13), order(13)[:5])
    at = np.sort(order(8)[:3])  # random discovery inputs, not the first ones
    ref_rows = discovery0[at]
    assert _json(os.path.join(ref, "cell.json"))["inputs"] == ref_rows.tolist()
    assert not np.array_equal(at, np.arange(3))
    d0 = make(0)[ref_rows].pad(width)
    np.testing.assert_allclose(x.per_input, mv.attribute(model, d0, "exact", level="node", progress=False).per_input)
    np.testing.assert_array_equal(x.uid, d0.uid)
    approx = _load(os.path.join(ref, "eap-ig-inputs-m2-node.safetensors"))
    want_noise = mv.stats.estimator_noise(approx, x, n_edges=(5, 10)).summary()
    assert noise["node"]["eap-ig-inputs-m2"]["mean_rmse"] == pytest.approx(want_noise["mean_rmse"])
    assert noise["edge"]["eap-ig-inputs-m2"]["edges"] == 8
    # edge level: the reference's exact edges against the first cell's scores of the same inputs
    subset = np.load(os.path.join(ref, "edge-subset.npy"))
    xe = _load(os.path.join(ref, "exact-edge.safetensors")).per_input[:, subset]
    ae = _load(os.path.join(rd.cell_dir(cells[0].id), "scores.safetensors")).per_input[at][:, subset]
    want_edge = mv.stats.estimator_noise(ae, xe, n_edges=(5,)).summary()
    assert noise["edge"]["eap-ig-inputs-m2"]["mean_rmse"] == pytest.approx(want_edge["mean_rmse"])
    assert results.verdict.startswith("undetermined")  # B = 16 < 100: the paper's bar cannot be met


def test_report_has_every_figure(tiny_study):
    from mivar_jax.report import FIGURES

    _, out, _ = tiny_study
    page = _text(os.path.join(out, "report.html"))
    assert "<b>Verdict.</b>" in page and "<script src" not in page and "<link " not in page  # self-contained
    for name, _ in FIGURES:
        path = os.path.join(out, "figures", f"{name}.png")
        assert f'data-file="figures/{name}.png"' in page and 'src="data:image/png;base64,' in page
        img = mpimg.imread(path)
        assert img.shape[0] > 200 and img.shape[1] > 300, name
        assert img[..., :3].std() > 0.02, f"{name} looks blank"
    assert page.count("<img ") == len(FIGURES)
    # the Jaccard interval is named for what it is; standard errors sit next to the evaluation
    assert ">mean Jaccard [MC interval]</th>" in page and "Monte-Carlo interval over the B replicates" in page
    assert ">empty replicates</th>" in page and ">replicates with ties at the cut</th>" in page
    assert ">median SNR</th>" in page and "CVs are never averaged" in page
    assert re.search(r"<td class='num'>-?\d\.\d{3} ± \d\.\d{3}</td>", page)  # faithfulness ± its standard error
    # past the paper: held-out against in-sample faithfulness, prompts needed, CPR / CMD intervals,
    # stability at fixed faithfulness, each cell with its reading
    for th in (
        "faithfulness (held-out)",
        "faithfulness in sample",
        "prompts needed",
        "CPR [BCa]",
        "Jaccard at f ≥ 0.3",
    ):
        assert f">{th}</th>" in page, th
    assert page.count("to call this top-20 circuit stable") == 2
    assert page.count("edges within the 95% band of the cut (") == 2  # each cell's margins, read out


# ------------------------------------------------------------------------------------ resume
_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    import jax
    from mivar_jax.study import Study, StudyConfig, runner
    assert jax.device_count() == 8
    config, out, where = sys.argv[1:4]

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if where == "between":  # right after the first cell is committed
        runner.Reporter.cell_end = die
    else:  # inside the next cell, after its scores are saved
        runner.stats.bootstrap = die
    study = Study(StudyConfig.from_file(config))
    study.run(out, resume=os.path.exists(os.path.join(out, "manifest.json")), progress=False)
    """
)


def _kill_run(tmp_path, cfg, out, where):
    (tmp_path / "study.json").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "killer.py").write_text(_KILLER)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "killer.py"), str(tmp_path / "study.json"), str(out), where],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def test_resume_after_kill_between_and_inside_cells_on_eight_devices(tiny_study, tmp_path, monkeypatch):
    """Killed (SIGKILL) after the first cell and inside the second, both runs on 8 forced CPU devices,
    then resumed here on one: nothing recomputed, nothing lost, every file identical to the
    uninterrupted one-device run (so the cells computed on 8 devices equal those on 1)."""
    cfg, reference_out, _ = tiny_study
    out = tmp_path / "run"
    first, second = (c.id for c in cfg.cells())
    _kill_run(tmp_path, cfg, out, "between")
    rd = RunDir.open(out)
    assert rd.done_cells() == [first] and rd.manifest["status"] == "running"
    assert _json(rd.file("environment.json"))["device_count"] == 8
    _kill_run(tmp_path, cfg, out, "inside")
    assert rd.done_cells() == [first]
    assert os.path.exists(os.path.join(rd.partial_dir(second), "scores.safetensors"))

    calls = _count_attribute_calls(monkeypatch)
    with pytest.raises(RunDirError, match="already holds a run"):
        Study(cfg).run(out, progress=False)
    Study.resume(out, progress=False)
    assert ("eap-ig-inputs", "edge") not in calls  # both cells' scores came from the interrupted runs
    assert sorted(calls) == sorted([("exact", "node"), ("eap-ig-inputs", "node"), ("exact", "edge")])
    assert sorted(rd.done_cells()) == sorted([first, second, "reference"]) and rd.manifest["status"] == "complete"

    # identical to the uninterrupted one-device run, file by file
    for name in ("summary.json", "perturbations.json", "decomposition.json", "estimator_noise.json"):
        assert _json(rd.file("results", name)) == _json(os.path.join(reference_out, "results", name)), name
    for c in (first, second):
        for name in ("bootstrap.json", "evaluation.json"):
            assert _json(os.path.join(rd.cell_dir(c), name)) == _json(os.path.join(reference_out, "cells", c, name))
        a = _load(os.path.join(rd.cell_dir(c), "scores.safetensors"))
        b = _load(os.path.join(reference_out, "cells", c, "scores.safetensors"))
        np.testing.assert_array_equal(a.per_input, b.per_input)
        with (
            np.load(os.path.join(rd.cell_dir(c), "bootstrap.npz")) as x,
            np.load(os.path.join(reference_out, "cells", c, "bootstrap.npz")) as y,
        ):
            assert sorted(x.files) == sorted(y.files)
            for k in x.files:
                np.testing.assert_array_equal(x[k], y[k])


def test_a_run_interrupted_inside_its_scoring_resumes_from_the_finished_batches(tiny_study, tmp_path, monkeypatch):
    """Stopped right after the first cell saved its first batch of scores (of two): the resume
    reads that batch back from the cell's checkpoint, computes only the second, and every cell's
    scores and bootstrap equal the uninterrupted run's (the tiny study without its costlier
    analyses, which do not touch the scores)."""
    from mivar_jax._shards import Checkpoint

    _, reference_out, _ = tiny_study
    cfg = tiny_config(
        tiny_study[0].model.source, reference={"level": "none"},
        stability={"curve": False, "faithfulness": [], "prompts_needed": False, "margins": False},
    )  # fmt: skip
    out, first = tmp_path / "run", cfg.cells()[0].id
    real, saved = Checkpoint.save, []

    def save(self, rows, values, clean, stop=True):
        real(self, rows, values, clean)
        saved.append(np.asarray(rows).tolist())
        if stop and len(saved) == 1:
            raise KeyboardInterrupt("stopped")

    monkeypatch.setattr(Checkpoint, "save", save)
    with pytest.raises(KeyboardInterrupt):
        Study(cfg).run(out, progress=False)
    rd = RunDir.open(out)
    folder = os.path.join(rd.partial_dir(first), "scores-checkpoint")
    assert rd.done_cells() == [] and sorted(os.listdir(folder)) == ["batch-000000000.safetensors", "job.json"]
    monkeypatch.setattr(Checkpoint, "save", lambda *a: save(*a, stop=False))
    Study.resume(out, progress=False)
    assert saved[:2] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # the first cell's second batch, not its first again
    assert rd.manifest["status"] == "complete"
    for c in cfg.cells():
        a = _load(os.path.join(rd.cell_dir(c.id), "scores.safetensors"))
        b = _load(os.path.join(reference_out, "cells", c.id, "scores.safetensors"))
        assert a.params.get("resumed_inputs") == (4 if c.id == first else None) and "resumed_inputs" not in b.params
        np.testing.assert_array_equal(a.per_input, b.per_input)
        np.testing.assert_array_equal(a.clean_metric, b.clean_metric)
        assert not os.path.exists(os.path.join(rd.cell_dir(c.id), "scores-checkpoint"))
        boot = [_json(os.path.join(d, "bootstrap.json")) for d in (rd.cell_dir(c.id), f"{reference_out}/cells/{c.id}")]
        assert boot[0] == [{k: v for k, v in r.items() if k != "selection"} for r in boot[1]]  # margins: off here


def _processes(cfg, out: Path, tmp_path: Path, n: int) -> list[subprocess.Popen]:
    """``mivar run`` of ``cfg`` as ``n`` JAX processes of one distributed run on this machine
    (localhost coordinator, gloo collectives on CPU); each worker's temporary files under
    ``tmp_path/tmp-<i>``."""
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    (tmp_path / "study.toml").write_text(cfg.to_toml())
    procs = []
    for i in range(n):
        (tmp := tmp_path / f"tmp-{i}").mkdir()
        env = {**os.environ, "PYTHONPATH": os.getcwd(), "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
               "JAX_NUM_PROCESSES": str(n), "JAX_PROCESS_ID": str(i), "MIVAR_HEARTBEAT_SECONDS": "10",
               "TMPDIR": str(tmp), "JAX_PLATFORMS": "cpu"}  # fmt: skip
        cmd = [sys.executable, "-m", "mivar_jax.cli", "run", str(tmp_path / "study.toml"), "-o", str(out),
               "--no-progress", "--no-report"]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _same_results(out, reference_out, cells) -> None:
    for name in ("summary.json", "perturbations.json", "decomposition.json", "estimator_noise.json"):
        assert _json(os.path.join(out, "results", name)) == _json(os.path.join(reference_out, "results", name)), name
    for c in cells:
        for name in ("bootstrap.json", "evaluation.json", "stability.json"):
            got = _json(os.path.join(out, "cells", c, name))
            assert got == _json(os.path.join(reference_out, "cells", c, name)), (c, name)
        a, b = (_load(os.path.join(d, "cells", c, "scores.safetensors")) for d in (out, reference_out))
        np.testing.assert_array_equal(a.per_input, b.per_input)


def _close(a, b, where="") -> None:
    """JSON values equal, floats within float32 rounding (rtol 1e-6): what XLA promises for float
    reductions over column blocks of different widths."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in (k for k in a if "seconds" not in k):  # timings differ
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-9), where
    else:
        assert a == b, where


def test_scores_larger_than_memory_give_the_same_study(tiny_study, tmp_path):
    """The tiny study with estimator.scores_memory_kib = 1: every cell's scores (and the reference's
    exact edge scores) go to disk in many shards as inputs finish and are read back in column blocks
    of a few edges; every result equals the in-memory run's (discrete ones exactly, floats within
    float32 rounding), the report included, and a resume reads the shards."""
    cfg, reference_out, _ = tiny_study
    cfg = dataclasses.replace(cfg, estimator=dataclasses.replace(cfg.estimator, scores_memory_kib=1))
    out = str(tmp_path / "run")
    Study(cfg).run(out, progress=False)
    cells = [c.id for c in cfg.cells()]
    for c in cells:
        shards = os.listdir(os.path.join(out, "cells", c, "scores-shards"))
        assert len(shards) >= 4, (c, shards)
        scores = _load(os.path.join(out, "cells", c, "scores.safetensors"))
        assert isinstance(scores.per_input, mv.ScoreShards)
        np.testing.assert_array_equal(
            np.asarray(scores.per_input), _load(os.path.join(reference_out, "cells", c, "scores.safetensors")).per_input
        )
        for name in ("bootstrap.json", "evaluation.json", "stability.json"):
            _close(_json(os.path.join(reference_out, "cells", c, name)), _json(os.path.join(out, "cells", c, name)), c)
        for name in ("bootstrap.npz", "circuits.npz"):
            a, b = (np.load(os.path.join(d, "cells", c, name)) for d in (reference_out, out))
            for k in a.files:
                np.testing.assert_array_equal(a[k], b[k], err_msg=(c, name, k))
    assert os.path.isdir(os.path.join(out, "cells", "reference", "exact-edge-shards"))
    for name in os.listdir(os.path.join(reference_out, "results")):
        if name.endswith(".json"):
            _close(_json(os.path.join(reference_out, "results", name)), _json(os.path.join(out, "results", name)), name)
    assert os.path.getsize(os.path.join(out, "report.html")) > 10_000
    shutil.rmtree(os.path.join(out, "results"))  # a resume re-analyses from the shards
    Study.resume(out, progress=False)
    _close(
        _json(os.path.join(reference_out, "results", "summary.json")),
        _json(os.path.join(out, "results", "summary.json")),
    )


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4])
def test_a_study_as_several_processes_equals_one(tiny_study, tmp_path, n):
    """The tiny study run as 2 and 4 JAX processes (jax.distributed on localhost, one CPU device
    each): every result identical to the one-process run; only process 0 writes (a worker's
    temporary run directory is gone at the end)."""
    cfg, reference_out, _ = tiny_study
    out = tmp_path / "run"
    procs = _processes(cfg, out, tmp_path, n)
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "Verdict:" in outputs[0][0]  # the table and verdict: process 0's, once
    for i, (stdout, _) in enumerate(outputs[1:], start=1):
        assert "Verdict:" not in stdout and f"process {i}: done; process 0 wrote {out}" in stdout, stdout
    assert _json(str(out / "environment.json"))["process_count"] == n
    assert _json(str(out / "environment.json"))["device_count"] == n
    _same_results(str(out), reference_out, [c.id for c in cfg.cells()])
    for i in range(1, n):
        assert not list((tmp_path / f"tmp-{i}").iterdir()), f"process {i} left files behind"


@pytest.mark.slow
def test_a_lost_process_stops_the_others_and_resume_finishes(tiny_study, tmp_path):
    """Process 1 of 2 killed (SIGKILL) once the first cell is committed: process 0 stops within the
    heartbeat timeout with JAX's message that another task died (no hang), the run directory
    keeps the finished cells, and ``--resume`` in one process finishes it, identical to the
    uninterrupted run."""
    import time

    cfg, reference_out, _ = tiny_study
    out = tmp_path / "run"
    first = cfg.cells()[0].id
    procs = _processes(cfg, out, tmp_path, 2)
    deadline = time.time() + 600
    while not (out / "cells" / first / "cell.json").exists():
        assert time.time() < deadline and procs[0].poll() is None, "the first cell never finished"
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    _, err = procs[0].communicate(timeout=120)  # the heartbeat timeout is 10 s
    procs[1].communicate()
    assert procs[0].returncode != 0 and "another task died" in err, err[-3000:]
    rd = RunDir.open(out)
    assert first in rd.done_cells() and rd.manifest["status"] == "running"
    Study.resume(out, progress=False)
    assert RunDir.open(out).manifest["status"] == "complete"
    _same_results(str(out), reference_out, [c.id for c in cfg.cells()])


def test_a_resume_as_several_processes_is_refused(tiny_study, monkeypatch):
    """Workers keep no files, so they cannot skip what process 0 skips: every process refuses."""
    cfg, reference_out, _ = tiny_study
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(RunDirError, match="resume a run in one process"):
        Study.resume(reference_out, progress=False)


def test_run_directory_refusals(tmp_path, hf_dirs):
    cfg = tiny_config(hf_dirs["gpt2"][0])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="exists and is not empty"):
        Study(cfg).run(tmp_path / "busy", progress=False)
    with pytest.raises(RunDirError, match="not a mivar run directory"):
        RunDir.open(tmp_path / "busy")
    rd = RunDir.create(tmp_path / "old", cfg)
    rd.unlock()
    manifest = rd.manifest
    manifest["format_version"] = 0
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunDirError, match=r"run-directory format 0; this mivar_jax .* reads formats \[1, 2\]"):
        Study.resume(tmp_path / "old", progress=False)
    other = RunDir.create(tmp_path / "locked", cfg)  # held by this process
    with pytest.raises(RunDirError, match="in use by another running study"):
        RunDir(tmp_path / "locked").lock()
    other.unlock()
    too_big = tiny_config(hf_dirs["gpt2"][0], circuits={"sizes": [20, 10_000]})
    with pytest.raises(ConfigError, match=r"circuits.sizes \[10000\] exceed the 110 edges"):
        Study(too_big).run(tmp_path / "big", progress=False)
    assert not (tmp_path / "big").exists()  # checked against the model before the directory is made


# ------------------------------------------------------------------------------------ CLI
def test_cli(tiny_study, tmp_path):
    cfg, out, _ = tiny_study
    cli = CliRunner()
    r = cli.invoke(app, ["show-default"])
    assert r.exit_code == 0 and StudyConfig.from_dict(tomllib.loads(r.stdout)) == default_config()
    r = cli.invoke(app, ["models"])
    assert r.exit_code == 0 and "smollm2-135m" in r.stdout
    r = cli.invoke(app, ["tasks"])
    assert r.exit_code == 0 and all(t in r.stdout for t in ("ioi", "sva", "greater-than", "communication"))
    r = cli.invoke(app, ["report", out])
    assert r.exit_code == 0, r.output
    assert "Verdict:" in r.stdout and "mean Jaccard" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[data]\nfamilies = ['sonnets']\n")
    r = cli.invoke(app, ["run", str(bad), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "data.families = 'sonnets' is not allowed" in r.output
    r = cli.invoke(app, ["run", "--resume", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "no such run directory" in r.output
    r = cli.invoke(app, ["run", "--resume", out, "--no-report"])  # complete: nothing recomputed
    assert r.exit_code == 0, r.output
    assert "3 cells, 3 already complete" in r.stdout and "Verdict:" in r.stdout


def test_run_files_are_strict_json(tmp_path):
    from mivar_jax.study.rundir import write_json

    write_json(tmp_path / "x.json", {"faithfulness": float("nan"), "rows": [1.5, float("-inf")], "pair": (2, "a")})
    text = (tmp_path / "x.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"faithfulness": None, "rows": [1.5, None], "pair": [2, "a"]}


# ------------------------------------------------------------------------------------ settings
def test_pooling_reaches_the_estimator_and_every_record(hf_dirs, tmp_path):
    """estimator.pooling (eap-ig-activations) is passed to attribute and recorded in the config,
    the scores, the cell record and the summary rows."""
    src = hf_dirs["gpt2"][0]
    cfg = tiny_config(
        src,
        data={"seeds": [0]},
        estimator={"methods": ["eap-ig-activations", "eap"], "steps": [2], "pooling": "source"},
        circuits={"evaluate": False},
        reference={"level": "none"},
    )
    out = tmp_path / "run"
    Study(cfg).run(out, progress=False, report=False)
    rd = RunDir.open(out)
    assert rd.config.estimator.pooling == "source" and 'pooling = "source"' in _text(rd.file("config.toml"))
    act, eap = cfg.cells()
    scores = _load(os.path.join(rd.cell_dir(act.id), "scores.safetensors"))
    assert scores.params["pooling"] == "source"
    model = mv.load_model(src)
    discovery, _ = Study(cfg).split(act, 8 + 5)  # checked against the seed's permutation in the test above
    data = mv.tasks.make("ioi", model, 8 + 5, 0, templates="transfer", counterfactual="abc")[discovery]
    want = mv.attribute(model, data, "eap-ig-activations", steps=2, batch_size=4, pooling="source", progress=False)
    np.testing.assert_array_equal(scores.per_input, want.per_input)
    other = mv.attribute(model, data, "eap-ig-activations", steps=2, batch_size=4, pooling="reference", progress=False)
    assert not np.allclose(other.per_input, want.per_input)  # the setting matters, so the record does
    assert _json(os.path.join(rd.cell_dir(act.id), "cell.json"))["estimator_settings"]["pooling"] == "source"
    assert "pooling" not in _json(os.path.join(rd.cell_dir(eap.id), "cell.json"))["estimator_settings"]
    rows = _json(rd.file("results", "summary.json"))
    assert {r["pooling"] for r in rows if r["cell"] == act.id} == {"source"}
    assert {r["pooling"] for r in rows if r["cell"] == eap.id} == {None}


def test_old_configs_without_pooling_read_as_the_old_default(tiny_study, tmp_path):
    _, out, _ = tiny_study
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    d = _json(copy / "config.json")
    del d["estimator"]["pooling"]
    (copy / "config.json").write_text(json.dumps(d))
    assert RunDir.open(copy).config.estimator.pooling == "source"  # what such runs used
    del d["data"]["holdout"], d["stability"]  # runs from before held-out evaluation: resumed as started
    (copy / "config.json").write_text(json.dumps(d))
    old = RunDir.open(copy).config
    assert old.data.holdout == 0 and old.stability.faithfulness == () and not old.stability.prompts_needed


def test_margin_readings_survive_nan_statistics(tiny_study):
    """NaN statistics reach the report as JSON nulls (a circuit no replicate changes, a zero score)."""
    from mivar_jax.report.html import _margin_readings

    _, _, results = tiny_study
    rows = [dict(r, contested_share=None, relative_se=None) for r in results.rows]
    text = _margin_readings(dataclasses.replace(results, rows=rows))
    assert text.count("no edge changes side between replicates") == 2 and "vary by –" in text


# ------------------------------------------------------------------------------------ output
_CELL_LINE = re.compile(r"^\[\d/3\] \S+: \d+\.\d s \(compile \d+\.\d s\) — top-20: undetermined: .*; faithfulness .+$")


def test_cli_run_lines_stay_whole_in_a_log(hf_dirs, tmp_path, monkeypatch):
    """Through the CLI into a non-terminal (as in CI or ``| tee``): every progress line, cell line
    and the verdict is one whole line, even when longer than the console, with no carriage return."""
    from mivar_jax import _progress

    monkeypatch.setattr(_progress, "DELAY_S", 0.0, raising=False)  # progress lines from the first item
    study = tmp_path / "tiny.json"
    study.write_text(json.dumps(tiny_config(hf_dirs["gpt2"][0]).to_dict()))
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["run", str(study), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "\r" not in r.output
    lines = r.output.splitlines()
    assert lines[0] == f"study tiny → {out}"
    done = [x for x in lines if _CELL_LINE.match(x)]
    assert len(done) == 2, lines  # both cells' lines, unbroken (they are longer than 150 characters)
    assert max(len(x) for x in done) > 150
    verdict = next(x for x in lines if x.startswith("Verdict:"))
    results = mv.study.analyse(RunDir.open(out))
    assert verdict == f"Verdict: {results.verdict}"
    assert any(x.startswith("MC interval: Monte-Carlo 95% interval") for x in lines)
    for col in ("mean Jaccard [MC", "empty", "ties", "median SNR"):
        assert col in r.stdout, col
    assert re.search(r"\d\.\d{3} ± \d\.\d{3}", r.stdout)  # faithfulness ± its standard error


# ------------------------------------------------------------------------------------ damaged runs
def _copy_run(tiny_study, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(tiny_study[1], copy)
    return copy


def _one_line_error(r) -> str:
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.stderr.startswith("error: ") and r.stderr.strip().count("\n") == 0, r.stderr
    return r.stderr


def test_damaged_cells_are_named_by_report_and_recomputed_on_resume(tiny_study, tmp_path, monkeypatch):
    """A truncated scores file, a corrupt bootstrap.json and an unreadable cell.json in a finished
    run: ``mivar report`` names the file and the fix in one line; ``--resume`` recomputes exactly
    the damaged cells (reusing their intact files) and the run ends identical to the undamaged one."""
    cfg, out, _ = tiny_study
    copy = _copy_run(tiny_study, tmp_path)
    first, second = (c.id for c in cfg.cells())
    scores = copy / "cells" / first / "scores.safetensors"
    scores.write_bytes(scores.read_bytes()[: scores.stat().st_size // 2])
    (copy / "cells" / second / "bootstrap.json").write_text('[{"aggregation": "mean", "si')
    cli = CliRunner()
    err = _one_line_error(cli.invoke(app, ["report", str(copy)]))
    assert f"{copy}/cells/{first}/scores.safetensors is damaged (checksum mismatch)" in err
    assert f"recompute it with `mivar run --resume {copy}`" in err
    (copy / "cells" / "reference" / "cell.json").write_text("{")

    calls = _count_attribute_calls(monkeypatch)
    r = cli.invoke(app, ["run", "--resume", str(copy), "--no-report"])
    assert r.exit_code == 0, r.output
    assert f"cell {first}: scores.safetensors damaged (checksum mismatch): recomputing" in r.output
    assert f"cell {second}: bootstrap.json damaged (checksum mismatch): recomputing" in r.output
    assert "cell reference: cell.json damaged (unreadable): recomputing" in r.output
    assert "3 cells, 0 already complete" in r.output
    # the second cell's scores were intact and reused; the reference had no trustworthy file left
    assert sorted(calls) == sorted([("eap-ig-inputs", "edge"), ("exact", "node"), ("eap-ig-inputs", "node"),
                                    ("exact", "edge")])  # fmt: skip
    rd = RunDir.open(copy)
    assert all(rd.check_cell(c) == [] for c in (first, second, "reference"))
    for name in ("summary.json", "decomposition.json", "estimator_noise.json"):
        assert _json(rd.file("results", name)) == _json(os.path.join(out, "results", name)), name
    for c in (first, second):
        a, b = (_load(os.path.join(d, "cells", c, "scores.safetensors")) for d in (copy, out))
        np.testing.assert_array_equal(a.per_input, b.per_input)
        assert _json(copy / "cells" / c / "bootstrap.json") == _json(os.path.join(out, "cells", c, "bootstrap.json"))
    assert cli.invoke(app, ["report", str(copy)]).exit_code == 0


def test_format_1_runs_are_read_unverified_and_not_resumed(tiny_study, tmp_path):
    """A run directory written before checksums (format 1) still opens for ``mivar report``; a
    damaged file in it is named in one line; ``--resume`` refuses it in one line."""
    copy = _copy_run(tiny_study, tmp_path)
    manifest = _json(copy / "manifest.json")
    (copy / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    for info_path in copy.glob("cells/*/cell.json"):
        info = _json(info_path)
        del info["checksums"]
        info_path.write_text(json.dumps(info))
    cli = CliRunner()
    r = cli.invoke(app, ["report", str(copy)])
    assert r.exit_code == 0, r.output
    err = _one_line_error(cli.invoke(app, ["run", "--resume", str(copy)]))
    assert "format 1" in err and f"`mivar report {copy}` still reads it" in err
    second = tiny_study[0].cells()[1].id
    (copy / "cells" / second / "bootstrap.json").write_text("[{")
    err = _one_line_error(cli.invoke(app, ["report", str(copy)]))
    assert f"{copy}/cells/{second}/bootstrap.json is not valid JSON" in err and "new directory" in err


def test_plan_sizes_every_cell_and_refuses_what_does_not_fit(hf_dirs, tmp_path):
    """``mv``'s planner: per cell the driver's batches (fewest calls of equal size within the memory
    model), peak memory = weights + one call's working memory, scores on disk = inputs × edges ×
    4 bytes; calibrated seconds for every cell; a device too small is refused with the fix; the CLI
    prints the table."""
    from mivar_jax.estimators.registry import get

    cfg = tiny_config(hf_dirs["gpt2"][0], estimator={"batch_size": 0, "memory_budget_mib": 16})
    model = mv.load_model(hf_dirs["gpt2"][0])
    p = mv.plan(cfg, model=model, calibrate=False)
    weights = sum(np.asarray(x).nbytes for x in jax.tree.leaves(model.params))
    assert p.edges == model.graph.n_edges and p.weights_bytes == weights and p.total_seconds is None
    assert [r["cell"] for r in p.rows] == [c.id for c in cfg.cells()] + ["reference"]
    width = max(
        mv.tasks.make("ioi", model, 13, c.seed, templates="transfer", counterfactual="abc").n_positions
        for c in cfg.cells()
    )
    per_input = get("eap-ig-inputs").bytes_per_input(model.config, width)
    fit = mv.engine.fit(16 * 2**20, per_input, cap=32, what="")
    for r in p.rows[:-1]:
        assert (r["batch"], r["calls"]) == mv.engine.even_chunks(8, fit, bucketed=False)
        assert r["peak_bytes"] == weights + r["batch"] * per_input and r["scores_bytes"] == 4 * 8 * p.edges
    assert p.peak_bytes == max(r["peak_bytes"] for r in p.rows)
    with pytest.raises(ConfigError, match="lower estimator.memory_budget_mib"):
        mv.plan(cfg, model=model, calibrate=False, device_bytes=weights)
    timed = mv.plan(cfg, model=model)
    assert all(r["seconds"] > 0 for r in timed.rows) and timed.calibration_seconds > 0
    assert timed.total_seconds == pytest.approx(sum(r["seconds"] for r in timed.rows))
    (tmp_path / "study.toml").write_text(cfg.to_toml())
    result = CliRunner().invoke(app, ["plan", str(tmp_path / "study.toml"), "--no-calibrate"])
    assert result.exit_code == 0, result.output
    assert "plan of tiny" in result.output and "reference" in result.output and "scores on disk" in result.output
    assert not any(r["scores_sharded"] for r in p.rows) and "(shards)" not in result.output
    # scores larger than estimator.scores_memory_kib: the plan says they go to disk in shards
    small = tiny_config(hf_dirs["gpt2"][0], estimator={"scores_memory_kib": 1})
    assert all(r["scores_sharded"] for r in mv.plan(small, model=model, calibrate=False).rows)
    (tmp_path / "small.toml").write_text(small.to_toml())
    result = CliRunner().invoke(app, ["plan", str(tmp_path / "small.toml"), "--no-calibrate"])
    assert result.exit_code == 0 and "(shards)" in result.output and "written to disk as they are" in result.output
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    cmd = [
        sys.executable,
        "-m",
        "mivar_jax.cli",
        "plan",
        str(tmp_path / "study.toml"),
        "--device",
        "tpu",
        "--no-calibrate",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "--device tpu: JAX finds no such device here" in proc.stderr, proc.stderr[-2000:]
