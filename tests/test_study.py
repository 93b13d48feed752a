"""Studies end to end on a tiny random GPT-2 (written by transformers): config validation, the run
directory against direct library calls, resume after kill -9 between and inside cells (killed runs
on 8 forced CPU devices, identical to one device), the report, and the ``mivar`` command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import jax
import matplotlib.image as mpimg
import numpy as np
import pytest
from typer.testing import CliRunner

import mivar_jax as mv
from mivar_jax.cli import app
from mivar_jax.study import ConfigError, RunDir, RunDirError, Study, StudyConfig, default_config
from mivar_jax.study import runner as runner_module


def tiny_config(source: str, **sections) -> StudyConfig:
    d = {
        "name": "tiny",
        "seed": 3,
        "model": {"source": source},
        "data": {"task": "ioi", "n": 8, "seeds": [0, 1], "families": ["transfer"], "counterfactuals": ["abc"]},
        "estimator": {"methods": ["eap-ig-inputs"], "steps": [2], "batch_size": 4},
        "circuits": {"sizes": [6, 20], "eval_inputs": 4},
        "bootstrap": {"replicates": 16, "size": 20},
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
        ({"data": {"n": 4}, "reference": {"inputs": 5}}, "reference.inputs = 5 is impossible"),
        ({"model": {"dtype": "int8"}}, "model.dtype = 'int8' is not allowed"),
        ({"data": 3}, "data must be a table"),
        ({"data": {"prepend_bos": "yes"}}, "data.prepend_bos must be a boolean"),
    ]
    for d, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            StudyConfig.from_dict(d)


def test_config_files(tmp_path):
    c = default_config()
    assert StudyConfig.from_dict(tomllib.loads(c.to_toml())) == c
    path = tmp_path / "s.toml"
    path.write_text('name = "x"\n[data]\nn = 12\nfamilies = ["transfer"]\n')
    loaded = StudyConfig.from_file(path)
    assert loaded.data.n == 12 and loaded.data.families == ("transfer",) and loaded.bootstrap == c.bootstrap
    path.write_text("[data\nn = 1")
    with pytest.raises(ConfigError, match="s.toml: not valid TOML"):
        StudyConfig.from_file(path)
    path.write_text("[bootstrap]\nmethod = 'jackknife'\n")
    with pytest.raises(ConfigError, match="s.toml: bootstrap.method = 'jackknife' is not allowed"):
        StudyConfig.from_file(path)
    with pytest.raises(ConfigError, match="cannot read study file"):
        StudyConfig.from_file(tmp_path / "missing.toml")


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
    for c in cells:
        folder = rd.cell_dir(c.id)
        data = mv.tasks.TaskData.load(rd.file("data", f"s{c.seed}-transfer-abc-n0.npz"))
        direct = mv.tasks.make("ioi", model, 8, c.seed, templates="transfer", counterfactual="abc")
        np.testing.assert_array_equal(data.clean, direct.clean)
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
        ev = _json(os.path.join(folder, "evaluation.json"))
        assert [(e["size"], e["circuit"]) for e in ev] == [(6, "full"), (20, "full"), (20, "majority")]
        direct_ev = mv.evaluate(model, direct[:4], circ, progress=False)
        assert ev[1]["faithfulness"] == pytest.approx(direct_ev.faithfulness, rel=1e-5)
        assert ev[1]["kl"] == pytest.approx(direct_ev.kl_mean, rel=1e-4, abs=1e-7)
        header, *rows = _text(os.path.join(folder, "edges.csv")).splitlines()
        assert header.split(",")[:2] == ["edge", "mean"] and len(rows) == model.graph.n_edges
        first = rows[int(np.argmax(np.abs(want.per_input.mean(0))))].split(",")
        assert float(first[1]) == pytest.approx(
            float(want.per_input.mean(0)[model.graph.edge_index(first[0])]), rel=1e-5
        )

    # study-level tables
    summary = _json(rd.file("results", "summary.json"))
    assert len(summary) == len(cells) * len(cfg.circuits.sizes)
    csv_lines = _text(rd.file("results", "summary.csv")).splitlines()
    assert len(csv_lines) == len(summary) + 1 and csv_lines[0].startswith("cell,label,seed")
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
    d0 = mv.tasks.make("ioi", model, 8, 0, templates="transfer", counterfactual="abc")[:3]
    np.testing.assert_allclose(x.per_input, mv.attribute(model, d0, "exact", level="node", progress=False).per_input)
    approx = _load(os.path.join(ref, "eap-ig-inputs-m2-node.safetensors"))
    want_noise = mv.stats.estimator_noise(approx, x, n_edges=(5, 10)).summary()
    assert noise["node"]["eap-ig-inputs-m2"]["mean_rmse"] == pytest.approx(want_noise["mean_rmse"])
    assert noise["edge"]["eap-ig-inputs-m2"]["edges"] == 8
    assert results.verdict.startswith("undetermined")  # B = 16 < 100: the paper's bar cannot be met


def test_report_has_every_figure(tiny_study):
    from mivar_jax.report import FIGURES

    _, out, _ = tiny_study
    page = _text(os.path.join(out, "report.html"))
    assert "<b>Verdict.</b>" in page and "http://" not in page and "https://" not in page  # self-contained
    for name, _ in FIGURES:
        path = os.path.join(out, "figures", f"{name}.png")
        assert f'data-file="figures/{name}.png"' in page and 'src="data:image/png;base64,' in page
        img = mpimg.imread(path)
        assert img.shape[0] > 200 and img.shape[1] > 300, name
        assert img[..., :3].std() > 0.02, f"{name} looks blank"
    assert page.count("<img ") == len(FIGURES)


# ------------------------------------------------------------------------------------ resume
_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
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

    calls = []
    real = runner_module.attribute

    def counting(model, data, method, **kw):
        calls.append((method, kw.get("level")))
        return real(model, data, method, **kw)

    monkeypatch.setattr(runner_module, "attribute", counting)
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
    with pytest.raises(RunDirError, match="run-directory format 0; this mivar_jax .* reads format 1"):
        Study.resume(tmp_path / "old", progress=False)
    other = RunDir.create(tmp_path / "locked", cfg)  # held by this process
    with pytest.raises(RunDirError, match="in use by another running study"):
        RunDir(tmp_path / "locked").lock()
    other.unlock()
    too_big = tiny_config(hf_dirs["gpt2"][0], circuits={"sizes": [20, 10_000]})
    with pytest.raises(ConfigError, match=r"circuits.sizes \[10000\] exceed the 110 edges"):
        Study(too_big).run(tmp_path / "big", progress=False)


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
