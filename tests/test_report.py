"""The report a reader sees: readable tables, readings generated from the numbers (tested on
planted results), the interactive views and ``mivar compare`` — loaded in a real browser
(headless Chromium over the DevTools protocol): no JavaScript error, every figure and interactive
element in the DOM, hovering an edge shows its scores, the frequency slider filters the edges,
no table wider than the page at 1280 px, a screenshot that is not blank."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from typer.testing import CliRunner

from mivar_jax.circuits.pruning import slot_owner
from mivar_jax.cli import app
from mivar_jax.report import FIGURES, readings
from mivar_jax.report.tables import fmt, interval
from mivar_jax.scores import Scores
from mivar_jax.study import RunDir, Study
from tests import browser
from tests.test_study import tiny_config

REQUIRED = os.environ.get("MIVAR_BROWSER_REQUIRED") == "1"  # .ci/run sets it once chromium is installed


@pytest.fixture(scope="module")
def runs(hf_dirs, tmp_path_factory):
    """Two finished tiny runs on the same model: EAP-IG on two dataset seeds, EAP on one."""
    root = tmp_path_factory.mktemp("report")
    a = tiny_config(hf_dirs["gpt2"][0])
    b = tiny_config(hf_dirs["gpt2"][0], name="tiny-eap", data={"seeds": [0]}, estimator={"methods": ["eap"]},
                    reference={"level": "none"})  # fmt: skip
    Study(a).run(root / "a", progress=False)
    Study(b).run(root / "b", progress=False)
    return str(root / "a"), str(root / "b")


@pytest.fixture(scope="module")
def chromium():
    exe = browser.find()
    if exe is None:
        if REQUIRED:
            pytest.fail("MIVAR_BROWSER_REQUIRED=1 but no chromium on PATH")
        pytest.skip("no chromium on PATH: install Debian's chromium package (.ci/run does) to run the browser tests")
    b = browser.Browser(exe, width=1280, height=1000)
    yield b
    b.close()


# ------------------------------------------------------------------------------------ tables and readings
def test_numbers_are_formatted_to_their_precision():
    assert interval(0.81534, 0.8031, 0.82649) == "0.815 [0.803, 0.826]"
    assert interval(0.5, float("nan"), 0.6) == "0.500" and interval(None, 0, 1) == "–"
    assert fmt(None) == fmt(float("nan")) == "–" and fmt(True) == "yes" and fmt(123211) == "123,211"
    assert fmt(0.0001234) == "1.23e-04" and fmt(12.345, 1) == "12.3" and fmt(0.5) == "0.500"


def test_views_of_degenerate_runs_say_so():
    """Every replicate circuit pruned to nothing: the circuit view says so instead of drawing."""
    from mivar_jax.graph import Graph
    from mivar_jax.report import interactive

    g = Graph(2, 2)
    view = interactive.circuit_view(g, np.zeros(g.n_edges), np.zeros(g.n_edges), None, np.array([], int))
    assert "No edge was in any replicate's circuit" in view and "Plotly" not in view
    assert interactive.sparkline(np.array([1.0, 1.0])) == "█" and interactive.sparkline(np.array([np.nan])) == ""
    assert interactive.sparkline(np.array([0.0, 0.0, 0.0, 1.0]), bins=2) == "█▄"  # 3 low, 1 high: ⌈7 · 1/3⌉ = 3: ▄


def _row(label, j, f, stable, **kw):
    return {"cell": label, "label": label, "size": 100, "aggregation": "mean", "mean_jaccard": j, "stable": stable,
            "faithfulness": f, "faithfulness_se": 0.01, **kw}  # fmt: skip


def test_readings_follow_the_numbers():
    """Planted results: a stable and an unstable cell read differently, the words follow the bars."""
    stable = [_row("base", 0.91, 0.85, True), _row("abb", 0.88, 0.9, True)]
    mixed = [_row("base", 0.91, 0.04, True), _row("communication·abc", 0.52, 0.59, False)]
    s = readings.summary(stable, replicates=100)
    assert "stable under bootstrap in all 2 cells" in s and "unstable" not in s and "high" in s
    m = readings.summary(mixed, replicates=100)
    assert "in 1 of 2 cells" in m and "the unstable cell is communication·abc" in m
    assert "low in 1 of 2 cells (0.040–0.590" in m and "larger circuits" in m and "prompts are enough" in m
    assert "undetermined" in readings.summary(stable, replicates=16) and "undetermined" not in s
    assert readings.summary([_row("base", 0.6, 0.7, False)], 100).startswith("The top-100 circuit is not stable")
    # Jaccard matrices: the cell whose replicates agree least is named, with its mean
    rng = np.random.default_rng(0)
    low = rng.uniform(0.2, 0.6, (8, 8))
    high = np.full((8, 8), 0.95)
    t = readings.jaccard({"a": high, "b": (low + low.T) / 2})
    off = ((low + low.T) / 2)[~np.eye(8, dtype=bool)]
    assert f"agree least in b (mean pairwise Jaccard {off.mean():.3f}" in t and "most in a (0.950)" in t
    # inclusion frequencies: counts by brute force
    f = np.array([1.0, 1.0, 0.5, 0.3, 0.0, 0.9])
    assert "a: 2 edges in every replicate, 4 in at least half, 1 in fewer than half" in readings.inclusion({"a": f}, 4)
    # the factor that changes the circuit most, and whether any is below the bar
    p = readings.perturbations({"size": 100, "mean_by_factor": {"seed": 0.9, "family": 0.41}})
    assert p.startswith("Changing the family changes the top-100 circuit most") and "the seed least (0.900)" in p
    assert "depends on that choice: family." in p
    # optimism: a gap beyond two standard errors is named, one within is not
    fit = [
        _row("base", 0.9, 0.3, True, eval_set="held-out", faithfulness_in_sample=0.6, faithfulness_in_sample_se=0.01)
    ]
    ok = [
        _row("base", 0.9, 0.3, True, eval_set="held-out", faithfulness_in_sample=0.31, faithfulness_in_sample_se=0.01)
    ]
    assert "better than new ones" in readings.held_out(fit) and "no sign" in readings.held_out(ok)
    # faithfulness by size: where it reaches the bar, or the best it gets
    curve = [_row("base", j, f, True, size=n) for n, j, f in ((10, 0.9, 0.3), (100, 0.8, 0.85))]
    curve += [_row("x", j, f, True, size=n, cell="x") for n, j, f in ((10, 0.9, 0.1), (100, 0.7, 0.4))]
    c = readings.curve(curve)
    assert "reaches 0.8 in base at n = 100" in c and "x (best 0.400 at n = 100)" in c and "falls" in c
    n = readings.estimator_noise({"edge": {"eap": {"spearman_median": 0.4}, "eap-ig": {"spearman_median": 0.9}}})
    assert n.startswith("At edge level, eap-ig ranks closest") and "eap farthest (0.400)" in n
    assert "more than its mean" in readings.scores([_row("base", 0.9, 0.5, True, snr_median=0.3)])
    timed = [{"seconds": 100.0, "compile_seconds": 20.0, "estimator_seconds": 30.0},
             {"seconds": 80.0, "compile_seconds": 5.0, "estimator_seconds": 30.2}]  # fmt: skip
    assert readings.cells(timed) == (
        "2 cells took 180 s in all (80–100 s each; scoring 30 s); 25 s of it compiling kernels, which a second run "
        "of the same shapes skips."
    )


# ------------------------------------------------------------------------------------ the report in a browser
def _plots(b) -> dict:
    return b.js(
        "Object.fromEntries([...document.querySelectorAll('.js-plotly-plot')].map(d => [d.id, "
        "{svg: d.querySelectorAll('.main-svg').length, traces: d.data.length, "
        "slider: d.querySelectorAll('.slider-container').length, menu: d.querySelectorAll('.updatemenu-container').length}]))"
    )


def _fits(b, width: int) -> None:
    """Nothing wider than the page: no sideways scroll of the page, every table inside it."""
    assert b.js("document.documentElement.scrollWidth") <= width
    wide = b.js(
        "[...document.querySelectorAll('table')].map(t => [t.getBoundingClientRect().width, "
        "t.closest('.table-box').getBoundingClientRect().right]).filter(([w, r]) => w > document.body.clientWidth || "
        f"r > {width})"
    )
    assert wide == [], wide


def _not_blank(png: bytes) -> None:
    img = mpimg.imread(io.BytesIO(png))
    assert img.shape[:2] == (1000, 1280) and img[..., :3].std() > 0.05


def test_report_in_a_browser(runs, chromium, tmp_path):
    a, _ = runs
    page = os.path.join(a, "report.html")
    text = Path(page).read_text(encoding="utf-8")
    assert "<script src" not in text and "<link " not in text  # one file
    chromium.open(page)
    assert chromium.errors == []
    loaded = chromium.js("performance.getEntriesByType('resource').map(e => e.name)")
    assert all(u.startswith(("file:", "data:", "blob:")) for u in loaded), loaded  # nothing from the network
    # every static figure loaded
    imgs = chromium.js("[...document.querySelectorAll('figure img')].map(i => [i.complete, i.naturalWidth])")
    assert len(imgs) == len(FIGURES) and all(ok and w > 300 for ok, w in imgs)
    # the interactive views drew, with their controls
    plots = _plots(chromium)
    assert set(plots) == {"circuit-view", "jaccard-view", "score-view"}
    assert all(p["svg"] >= 1 for p in plots.values())
    assert (
        plots["circuit-view"]["slider"] == 1 and plots["jaccard-view"]["menu"] == 1 and plots["score-view"]["menu"] == 1
    )
    # hovering an edge's marker shows its scores
    marker = chromium.js(
        "(() => { const d = document.getElementById('circuit-view');"
        "return d.data.findIndex(t => t.mode === 'markers' && t.visible !== false && t.name !== 'nodes'); })()"
    )
    assert marker >= 0
    chromium.js(f"Plotly.Fx.hover('circuit-view', [{{curveNumber: {marker}, pointNumber: 0}}])")
    hover = chromium.js("[...document.querySelectorAll('#circuit-view .hovertext')].map(e => e.textContent).join(' ')")
    assert "of the bootstrap replicates" in hover and "histogram:" in hover and "per input: mean" in hover
    # the slider filters edges by inclusion frequency: at 1.0 exactly the edges of every replicate remain
    z = np.load(os.path.join(a, "cells", RunDir.open(a).config.cells()[0].id, "bootstrap.npz"))
    freq = z["mean-n20/inclusion_frequency"]
    g = Scores.load(os.path.join(a, "cells", RunDir.open(a).config.cells()[0].id, "scores.safetensors")).graph
    for step, threshold in ((9, 1.0), (4, 0.5)):
        chromium.js(
            "(() => { const d = document.getElementById('circuit-view');"
            f"return Plotly.restyle(d, d.layout.sliders[0].steps[{step}].args[0]).then(() => 1); }})()"
        )
        shown = chromium.js(
            "document.getElementById('circuit-view').data.filter(t => t.mode === 'markers' && t.name !== 'nodes' "
            "&& t.visible !== false).reduce((n, t) => n + t.x.length, 0)"
        )
        assert shown == int((freq >= threshold - 1e-9).sum()), threshold
        nodes = chromium.js(
            "document.getElementById('circuit-view').data.filter(t => t.name === 'nodes' && t.visible !== false)"
            ".map(t => t.text)"
        )
        kept = np.nonzero(freq >= threshold - 1e-9)[0]  # the nodes at either end of the kept edges
        ends = set(g.edge_src[kept]) | set(slot_owner(g)[g.edge_dst[kept]])
        assert len(nodes) == 1 and sorted(nodes[0]) == sorted(g.node_names[n] for n in ends), threshold
    # the tables are labelled, formatted and fit the page
    assert re.search(r">mean Jaccard \[MC interval\]</th>", text)
    assert re.search(r"<td class='num'>0\.\d{3} \[0\.\d{3}, 0\.\d{3}\]</td>", text)  # an interval as value [low, high]
    assert "n_edges_mean" not in chromium.js("document.body.innerText")
    _fits(chromium, 1280)
    assert chromium.js("document.querySelectorAll('p.reading').length") >= 8
    _not_blank(chromium.screenshot(str(tmp_path / "report.png")))
    assert chromium.errors == []


def test_compare_runs(runs, chromium, tmp_path):
    a, b = runs
    out = tmp_path / "cmp"
    r = CliRunner().invoke(app, ["compare", a, b, "--out", str(out)])
    assert r.exit_code == 0, r.output
    page = str(out / "compare.html")
    assert os.path.exists(out / "figures" / "faithfulness_curve.png")
    text = Path(page).read_text(encoding="utf-8")
    # the first cells' circuits against each other: Jaccard by sets of edge indices
    circuits = []
    for run in (a, b):
        cfg = RunDir.open(run).config
        z = np.load(os.path.join(run, "cells", cfg.cells()[0].id, "circuits.npz"))
        full = np.unpackbits(z["full_packed"], axis=-1, count=int(z["n_edges"])).astype(bool)
        circuits.append(set(np.nonzero(full[0, cfg.circuits.sizes.index(cfg.bootstrap.size)])[0].tolist()))
    want = len(circuits[0] & circuits[1]) / len(circuits[0] | circuits[1])
    assert f"<td class='num'>{want:.3f}</td>" in text and f"overlap with Jaccard {want:.3f}" in text
    chromium.open(page)
    assert chromium.errors == []
    plots = _plots(chromium)
    assert list(plots) == ["curves-view"] and plots["curves-view"]["traces"] >= 4  # 3 cells × 2 panels
    rows = chromium.js("document.querySelectorAll('table')[1].querySelectorAll('tbody tr').length")
    assert rows == 3  # every cell of both runs at its headline size
    _fits(chromium, 1280)
    _not_blank(chromium.screenshot(str(tmp_path / "compare.png")))
    # refusals: one run, a folder that is not a run
    one = CliRunner().invoke(app, ["compare", a])
    assert one.exit_code != 0 and "at least two run directories" in one.output
    bad = CliRunner().invoke(app, ["compare", a, str(tmp_path)])
    assert bad.exit_code != 0 and "not a mivar run directory" in bad.output
