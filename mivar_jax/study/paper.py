"""The paper preset: the analyses of Méloux, Portet & Peyrard (arXiv 2510.00845) on one model, for
IOI, SVA and Greater-Than, as one study per task in one run directory:

    RUN_DIR/preset.json       the preset, model, scale and each task's resolved config
    RUN_DIR/<task>/           a study run directory (resumable, with its own results/ and report)
    RUN_DIR/paper.json        the paper's analyses gathered over the tasks (``analyse_paper``)
    RUN_DIR/findings.md       the same as tables, with the paper's reported numbers beside

The preset (``presets/paper.toml``, printed by ``mivar show-default paper``) holds the shared
``[study]``, a table per task and per scale; a task's config is ``[study]`` overridden by
``[task.<task>]`` then ``[scale.<scale>]``, then the model source.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
import tomllib
from importlib import resources
from typing import Any

import jax
import numpy as np

from mivar_jax.study.analysis import StudyResults, analyse, changed_levels, load_npz, read_cell_file
from mivar_jax.study.config import REFERENCE, ConfigError, StudyConfig
from mivar_jax.study.rundir import RunDir, RunDirError, read_json, write_json
from mivar_jax.study.runner import Reporter, Study

SCALES = ("small", "paper")
PRESET = "preset.json"  # marks a run directory of the paper preset
# The paper's reported numbers (../shared/docs/paper.md §6: IOI, bootstrap n = 100), for the findings.
PAPER_HEADLINE = {
    "gpt2-small": {"circuit_error": 0.11, "mean_jaccard": 0.67, "jaccard_cv": 0.19},
    "Llama-3.2-1B": {"circuit_error": 0.66, "mean_jaccard": 0.39, "jaccard_cv": 0.85},
    "Llama-3.2-1B-Instruct": {"circuit_error": 0.69, "mean_jaccard": 0.34, "jaccard_cv": 0.76},
}
PAPER_OTHER = {
    "gpt2-small IOI, dataset resampling": 0.88,
    "gpt2-small IOI, paraphrasing": 0.89,
    "Llama-3.2-1B-Instruct IOI, EAP-IG-inputs vs clean-corrupted": 0.071,
}


def preset_text() -> str:
    """The preset file (TOML, with its comments)."""
    return resources.files("mivar_jax.study").joinpath("presets", "paper.toml").read_text()


def paper_configs(model: str | None = None, scale: str = "small") -> dict[str, StudyConfig]:
    """Each task's study config: ``[study]`` ← ``[task.<task>]`` ← ``[scale.<scale>]`` ← ``model``."""
    if scale not in SCALES:
        raise ConfigError(f"scale = {scale!r} is not allowed; choose from {list(SCALES)}")
    preset = tomllib.loads(preset_text())
    out = {}
    for task in preset["tasks"]:
        d = _merge(_merge(preset["study"], preset["task"][task]), preset["scale"][scale])
        d["name"] = f"paper-{task}"
        if model is not None:
            d["model"] = {**d.get("model", {}), "source": str(model)}
        out[task] = StudyConfig.from_dict(d)
    return out


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def is_paper_run(path: str | os.PathLike) -> bool:
    return os.path.exists(os.path.join(path, PRESET))


def run_paper(
    out_dir: str | os.PathLike,
    *,
    model: str | None = None,
    scale: str = "small",
    resume: bool = False,
    reporter: Reporter | None = None,
    progress: bool = True,
    report: bool = True,
) -> dict:
    """Run (or, with ``resume``, finish) the preset into ``out_dir``: each task's study, then
    ``analyse_paper``. Returns what ``analyse_paper`` returns."""
    out_dir = os.fspath(out_dir)
    reporter = reporter or Reporter(sys.stderr if progress else None)
    if resume:
        meta = _read_preset(out_dir)
    else:
        configs = paper_configs(model, scale)
        meta = {"preset": "paper", "scale": scale, "model": next(iter(configs.values())).model.source,
                "configs": {t: c.to_dict() for t, c in configs.items()}}  # fmt: skip
    configs = {t: StudyConfig.from_dict(c) for t, c in meta["configs"].items()}
    worker = jax.process_index() != 0  # identical SPMD work (as in Study.run); only process 0 keeps files
    if worker:
        out_dir, resume = os.path.join(tempfile.mkdtemp(prefix="mivar-worker-"), "paper"), False
    models: dict[tuple[str, str], Any] = {}  # (source, dtype) → the model, loaded once for every task

    def model_of(cfg: StudyConfig):
        key = (cfg.model.source, cfg.model.dtype)
        if key not in models:
            models[key] = Study(cfg).load()
        return models[key]

    if not resume:  # every check before anything is written
        RunDir.check_new(out_dir)
        for cfg in configs.values():
            Study(cfg).check(model_of(cfg))
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as err:
            raise RunDirError(f"cannot create the run directory {out_dir}: {err.strerror}") from None
        write_json(os.path.join(out_dir, PRESET), meta)
    done: dict[str, StudyResults] = {}
    for i, (task, cfg) in enumerate(configs.items()):
        reporter.say(f"== task {i + 1}/{len(configs)}: {task} ==")
        path = os.path.join(out_dir, task)
        started = os.path.exists(os.path.join(path, "manifest.json"))
        if not started and os.path.exists(path) and os.listdir(path):
            raise RunDirError(
                f"{path} exists without a manifest.json (interrupted while it was being created); "
                f"remove it and resume: mivar run --resume {out_dir}"
            )
        if started and _intact_and_complete(RunDir.open(path), Study(cfg)):
            reporter.say(f"{task}: complete (from an earlier run)")
            continue
        study = Study(cfg)
        done[task] = study.run(path, resume=started, reporter=reporter, progress=progress, report=report,
                               model=model_of(cfg))  # fmt: skip
    if worker:
        shutil.rmtree(os.path.dirname(out_dir), ignore_errors=True)
        return {}
    return analyse_paper(out_dir, done)


def _intact_and_complete(rd: RunDir, study: Study) -> bool:
    """A finished task whose cells all pass their checksums (else ``Study.run`` resumes it,
    recomputing what is damaged)."""
    return rd.manifest.get("status") == "complete" and all(rd.damage(n) is None for n in study._names())


def task_dirs(out_dir: str | os.PathLike) -> list[str]:
    """The run directory of each task, in the preset's order."""
    return [os.path.join(out_dir, task) for task in _read_preset(os.fspath(out_dir))["configs"]]


def _read_preset(out_dir: str) -> dict:
    if not is_paper_run(out_dir):
        raise RunDirError(f"{out_dir} is not a run directory of the paper preset (no {PRESET})")
    return read_json(os.path.join(out_dir, PRESET))


# ---------------------------------------------------------------------- the analyses over tasks
def analyse_paper(out_dir: str | os.PathLike, analysed: dict[str, StudyResults] | None = None) -> dict:
    """Gather the paper's analyses from each task's finished study into ``paper.json`` and
    ``findings.md``: per task the headline (circuit error, mean Jaccard, Jaccard CV at the base
    cell), intrinsic variance of exact edge scores, estimator noise at edge level, the Jaccard of
    every perturbed cell's circuit to the base circuit, the aggregation × size sweep of the base
    cell, the overlap of EAP-IG-inputs and clean-corrupted circuits, and the variance decomposition
    of circuit membership (perturbation vs bootstrap resampling). ``analysed``: tasks whose study
    analysis is at hand (``Study.run``'s result); the others are analysed here."""
    out_dir = os.fspath(out_dir)
    meta = _read_preset(out_dir)
    tasks = {}
    for task in meta["configs"]:
        rd = RunDir.open(os.path.join(out_dir, task))
        if rd.manifest.get("status") != "complete":
            raise RunDirError(f"task {task} is not complete; resume the run first (mivar run --resume {out_dir})")
        tasks[task] = _task_findings(rd, (analysed or {}).get(task) or analyse(rd))
    paper = {"preset": "paper", "scale": meta["scale"], "model": meta["model"], "tasks": tasks}
    write_json(os.path.join(out_dir, "paper.json"), paper)
    from mivar_jax._io import atomic_write_text

    atomic_write_text(os.path.join(out_dir, "findings.md"), findings_markdown(paper))
    return paper


def _task_findings(rd: RunDir, results: StudyResults) -> dict:
    cfg = results.config
    cells = cfg.cells()
    base = cells[0]
    rows = {(r["cell"], r["aggregation"], r["size"]): r for r in results.rows}
    head = rows[(base.id, cfg.circuits.aggregations[0], cfg.bootstrap.size)]
    j = np.asarray(results.perturbations["jaccard"])
    labels = results.perturbations["labels"]
    to_base = [
        {
            "cell": c.id,
            "label": labels[i],
            "factor": "+".join(changed_levels(base, c)),
            "jaccard_to_base": float(j[0, i]),
        }
        for i, c in enumerate(cells)
        if i
    ]
    ig = [i for i, c in enumerate(cells) if c.dataset == base.dataset and c.method == "eap-ig-inputs"]
    cc = [i for i, c in enumerate(cells) if c.dataset == base.dataset and c.method == "clean-corrupted"]
    overlap = float(j[ig[0], cc[0]]) if ig and cc else None
    sweep = [
        {k: r[k] for k in ("aggregation", "size", "mean_jaccard", "jaccard_cv", "faithfulness", "circuit_error_task")}
        for (cell, _, _), r in rows.items()
        if cell == base.id
    ]
    z = read_cell_file(rd, os.path.join(rd.cell_dir(base.id), "circuits.npz"), load_npz)
    full = np.unpackbits(z["full_packed"], axis=-1, count=int(z["n_edges"])).astype(bool)  # [A, S, E]
    s = cfg.circuits.sizes.index(cfg.bootstrap.size)
    aggs = cfg.circuits.aggregations
    across_aggregations = {
        f"{aggs[a]} vs {aggs[b]}": _jaccard(full[a, s], full[b, s])
        for a in range(len(aggs))
        for b in range(a + 1, len(aggs))
    }
    decomposition = {
        k.removeprefix("membership_nested_") if k != "membership_nested" else "all cells": _shares(v)
        for k, v in results.decomposition.items()
        if k.startswith("membership_nested") and "table" in v
    }
    intrinsic = read_json(rd.file("results", "intrinsic.json")) if rd.is_done(REFERENCE) else {}
    return {
        "base_cell": base.id,
        "n_inputs": cfg.data.n,
        "held_out_inputs": cfg.data.holdout,
        "size": cfg.bootstrap.size,
        "replicates": cfg.bootstrap.replicates,
        "headline": {
            "estimator": base.estimator,
            "circuit_error": head["circuit_error_task"],
            "circuit_error_se": head["circuit_error_task_se"],
            "faithfulness": head["faithfulness"],
            "faithfulness_se": head["faithfulness_se"],
            "mean_jaccard": head["mean_jaccard"],
            "jaccard_cv": head["jaccard_cv"],
            "stable": head["stable"],
            "verdict": head["verdict"].split(":")[0],  # stable | unstable | undetermined (B < 100)
            "eval_set": head["eval_set"],
        },
        "intrinsic": intrinsic.get("summary", {}) | {"n_inputs": intrinsic.get("n_inputs")} if intrinsic else {},
        "estimator_noise": results.estimator_noise.get("edge", {}),
        "estimator_noise_node": results.estimator_noise.get("node", {}),
        "jaccard_to_base": to_base,
        "mean_by_factor": results.perturbations["mean_by_factor"],
        "eap_ig_vs_clean_corrupted": overlap,
        "hyperparameters": {"sweep": sweep, "across_aggregations": across_aggregations},
        "membership_variance": decomposition,
        "seconds": sum(c.get("seconds", 0.0) for c in results.cells),
    }


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def _shares(dec: dict) -> dict:
    """Each level's share of the membership variance (between levels vs bootstrap replicates)."""
    return {row["effect"]: row["ss_share"] for row in dec["table"]}


# ---------------------------------------------------------------------- the findings page
def findings_markdown(paper: dict) -> str:
    """The run's findings as markdown tables, the paper's reported numbers beside the headline."""
    f3 = lambda v: "–" if v is None else f"{v:.3f}"
    lines = [
        f"# Findings: the paper preset on {paper['model']} (scale {paper['scale']})",
        "",
        "## Headline (base cell: bootstrap of the top-n circuit; circuit error and faithfulness held out)",
        "",
        "| model | task | n | B | estimator | size | circuit error | faithfulness | mean Jaccard | Jaccard CV | verdict (≥ 0.8, B ≥ 100) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for task, t in paper["tasks"].items():
        h = t["headline"]
        lines.append(
            f"| {paper['model']} | {task} | {t['n_inputs']} | {t['replicates']} | {h['estimator']} | {t['size']} | "
            f"{f3(h['circuit_error'])} | {f3(h['faithfulness'])} | {f3(h['mean_jaccard'])} | {f3(h['jaccard_cv'])} | "
            f"{h['verdict']} |"
        )
    for model, h in PAPER_HEADLINE.items():
        lines.append(
            f"| {model} (paper) | ioi | – | 100 | eap-ig-inputs | – | {h['circuit_error']} | – | "
            f"{h['mean_jaccard']} | {h['jaccard_cv']} | unstable |"
        )
    lines += ["", "## Jaccard of each perturbed circuit to the base circuit", ""]
    lines += ["| task | factor | level | Jaccard to base |", "|---|---|---|---|"]
    for task, t in paper["tasks"].items():
        lines += [
            f"| {task} | {r['factor']} | {r['label']} | {f3(r['jaccard_to_base'])} |" for r in t["jaccard_to_base"]
        ]
    lines += ["", "Paper (gpt2-small IOI): " + "; ".join(f"{k} {v}" for k, v in PAPER_OTHER.items()), ""]
    lines += ["## EAP-IG-inputs vs clean-corrupted (Jaccard of the full-data circuits)", ""]
    lines += [f"- {task}: {f3(t['eap_ig_vs_clean_corrupted'])}" for task, t in paper["tasks"].items()]
    lines += ["", "## Intrinsic variance of exact single-input edge scores", ""]
    lines += ["| task | edges | inputs | median SNR | median CV | median sign agreement | share sign agr. < 0.8 |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for task, t in paper["tasks"].items():
        for group in ("top", "random"):
            if s := t["intrinsic"].get(group):
                lines.append(
                    f"| {task} | {group} ({s['edges']}) | {t['intrinsic']['n_inputs']} | {f3(s['snr_median'])} | "
                    f"{f3(s['cv_median'])} | {f3(s['sign_agreement_median'])} | "
                    f"{f3(s['share_sign_agreement_below_0.8'])} |"
                )
    lines += ["", "## Estimator noise against exact scores (reference edges)", ""]
    lines += ["| task | estimator | median Spearman | noise variance / intrinsic variance | top-10 Jaccard |",
              "|---|---|---|---|---|"]  # fmt: skip
    for task, t in paper["tasks"].items():
        for est, s in t["estimator_noise"].items():
            ratio = s["noise_variance"] / s["intrinsic_variance"] if s["intrinsic_variance"] else None
            lines.append(
                f"| {task} | {est} | {f3(s['spearman_median'])} | {f3(ratio)} | {f3(s['topn_jaccard'].get('10'))} |"
            )
    lines += ["", "## Membership variance: share from the perturbation vs bootstrap resampling", ""]
    lines += ["| task | factor | between levels | between replicates |", "|---|---|---|---|"]
    for task, t in paper["tasks"].items():
        for factor, shares in t["membership_variance"].items():
            between, within = list(shares.values())[:2]
            lines.append(f"| {task} | {factor} | {f3(between)} | {f3(within)} |")
    lines += ["", "## Hyperparameters (base cell): aggregation × circuit size", ""]
    lines += ["| task | aggregation | size | mean Jaccard | Jaccard CV | faithfulness | circuit error |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for task, t in paper["tasks"].items():
        lines += [
            f"| {task} | {r['aggregation']} | {r['size']} | {f3(r['mean_jaccard'])} | {f3(r['jaccard_cv'])} | "
            f"{f3(r['faithfulness'])} | {f3(r['circuit_error_task'])} |"
            for r in t["hyperparameters"]["sweep"]
        ]
        for pair, v in t["hyperparameters"]["across_aggregations"].items():
            lines.append(f"\n{task}: circuits of {pair} (size {t['size']}): Jaccard {f3(v)}")
    return "\n".join(lines) + "\n"


def summary_lines(paper: dict) -> list[str]:
    """One line per task for the command line."""
    out = []
    for task, t in paper["tasks"].items():
        h = t["headline"]
        f3 = lambda v: "–" if v is None else f"{v:.3f}"
        factors = ", ".join(f"{k} {v:.3f}" for k, v in t["mean_by_factor"].items())
        out.append(
            f"{task}: top-{t['size']} circuit error {f3(h['circuit_error'])}, faithfulness {f3(h['faithfulness'])}, "
            f"mean Jaccard {f3(h['mean_jaccard'])} (CV {f3(h['jaccard_cv'])}, {h['verdict']})"
            + (f"; Jaccard to base by factor: {factors}" if factors else "")
        )
    return out
