"""The ``mivar`` command: run studies, resume them, report on them, list models and tasks.

mivar run [STUDY.toml] [--out RUN_DIR]     run a study (the default study without a file)
mivar run paper [--model M] [--scale S]    the paper's analyses on IOI, SVA and Greater-Than
mivar run --resume RUN_DIR                 finish an interrupted run
mivar plan [STUDY.toml] [--device cpu|gpu|tpu]   expected time, memory and disk, before running
mivar report RUN_DIR                       rebuild results/ and report.html of a run
mivar compare RUN_A RUN_B [...] [--out DIR]  one report setting finished runs side by side
mivar models | mivar tasks | mivar show-default [paper]
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mivar_jax.study.runner import Reporter

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Circuit discovery as statistical estimation.")
console = Console(width=None if sys.stdout.isatty() else 150)  # logs and pipes get full-width tables
err = Console(stderr=True, soft_wrap=True)  # messages stay whole lines


class RichReporter(Reporter):
    """The study's progress lines on the rich console (one per cell, compile time apart), each a
    whole line: never wrapped, so logs and pipes (``| tee``) keep one line per event."""

    def say(self, text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)


def _fail(message: str) -> None:
    err.print(Text.assemble(("error: ", "bold red"), message))  # the message is plain text, never markup
    raise typer.Exit(2)


def _summary(results, run_dir: str) -> None:
    from mivar_jax.study.analysis import plus_minus

    cfg = results.config
    table = Table(title=f"top-{cfg.bootstrap.size} circuits ({cfg.circuits.aggregations[0]})")
    columns = ("cell", "edges", "mean Jaccard [MC interval]", "Jaccard CV", "empty", "ties", "median SNR",
               "faithfulness", "circuit error", "stable")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col == "cell" else "right")
    fmt = lambda v, spec=".3f": "–" if v is None else f"{v:{spec}}"
    for r in results.headline_rows():
        table.add_row(
            r["label"],
            f"{r['n_edges_mean']:.0f}",
            f"{r['mean_jaccard']:.3f} [{fmt(r['jaccard_mc_low'])}, {fmt(r['jaccard_mc_high'])}]",  # NaN: few replicates
            fmt(r["jaccard_cv"]),
            fmt(r.get("n_empty"), "d"),
            fmt(r.get("replicates_with_cut_ties"), "d"),
            fmt(r.get("snr_median"), ".2f"),
            plus_minus(r["faithfulness"], r.get("faithfulness_se")),
            plus_minus(r["circuit_error_task"], r.get("circuit_error_task_se")),
            "[green]yes[/green]" if r["stable"] else "[red]no[/red]",
        )
    console.print(table)
    console.print(
        f"MC interval: Monte-Carlo {cfg.bootstrap.confidence:.0%} interval of the mean pairwise Jaccard over the "
        f"B = {cfg.bootstrap.replicates} replicates (shrinks as B grows; not data uncertainty). empty: replicate "
        "circuits empty after pruning; ties: replicates with edges tied at the top-n cut; SNR: |mean|/std of the "
        "circuit's edges; ±: standard error over the evaluation inputs.",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"[bold]Verdict:[/bold] {results.verdict}", highlight=False, soft_wrap=True)
    report = os.path.join(run_dir, "report.html")
    lines = f"run directory: {run_dir}" + (f"\nreport: {report}" if os.path.exists(report) else "")
    console.print(lines, highlight=False, soft_wrap=True)


PRESETS = ("default", "paper")  # names `mivar run` takes in place of a study file


@app.command()
def run(
    study: Annotated[
        Path | None, typer.Argument(help="study file (TOML), or a preset: default (without one) or paper")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="new run directory (default: runs/<name>-<time>)")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="finish the interrupted run in this directory")
    ] = None,
    report: Annotated[bool, typer.Option(help="write figures and report.html")] = True,
    progress: Annotated[bool, typer.Option(help="progress bars inside long cells")] = True,
    model: Annotated[str | None, typer.Option(help="paper preset: the model source (default: smollm2-135m)")] = None,
    scale: Annotated[
        str,
        typer.Option(
            help="paper preset: small (4.5 min for smollm2-135m on a 2-core CPU) or paper (the paper's sizes, hours)"
        ),
    ] = "small",
):
    """Run a study (or resume one) and print its stability verdict."""
    import jax

    from mivar_jax.models import CheckpointError
    from mivar_jax.sharding import initialize_distributed
    from mivar_jax.study import ConfigError, RunDir, RunDirError, Study, paper

    preset = str(study) if study is not None and str(study) in PRESETS and not study.is_file() else None
    if resume is not None and paper.is_paper_run(resume):
        if study is not None and preset != "paper":
            _fail(f"{resume} is a run of the paper preset; resume it without a study file")
        preset = "paper"
    if preset != "paper" and (model is not None or scale != "small"):
        _fail("--model and --scale apply to the paper preset (mivar run paper); a study file sets model.source")
    initialize_distributed()
    _compilation_cache()
    run_dir = str(resume)
    try:
        if preset == "paper":
            if resume is not None and out is not None:
                _fail("--resume continues a run in its own directory; drop --out")
            if resume is not None and (model is not None or scale != "small"):
                _fail("--resume continues the run as it was started; drop --model and --scale")
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            run_dir = str(resume or out or Path("runs") / f"paper-{scale}-{stamp}")
            found = paper.run_paper(
                run_dir, model=model, scale=scale, resume=resume is not None, reporter=RichReporter(),
                progress=progress, report=report,
            )  # fmt: skip
            _paper_summary(found, run_dir)
            return
        if preset == "default":
            study = None
        if resume is not None:
            if out is not None:
                _fail("--resume continues a run in its own directory; drop --out")
            s = Study.from_file(study) if study is not None else Study(RunDir.open(resume).config)
        else:
            s = Study.from_file(study) if study is not None else Study()
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            run_dir = str(out or Path("runs") / f"{s.config.name}-{stamp}")
        results = s.run(run_dir, resume=resume is not None, reporter=RichReporter(), progress=progress, report=report)
    except (ConfigError, RunDirError, CheckpointError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        err.print(
            "\ninterrupted; finished cells are kept, and the finished batches of scores of the cell it stopped in. "
            f"Resume with: mivar run --resume {run_dir}"
        )
        raise typer.Exit(130) from None
    if jax.process_index() == 0:
        _summary(results, run_dir)
    else:  # a worker's files are gone; the table is process 0's to print
        console.print(
            f"process {jax.process_index()}: done; process 0 wrote {run_dir}", highlight=False, soft_wrap=True
        )


@app.command("plan")
def plan_cmd(
    study: Annotated[Path | None, typer.Argument(help="study file (TOML); the default study without one")] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, gpu or tpu: the platform to plan on (default: JAX's)")
    ] = None,
    calibrate: Annotated[
        bool, typer.Option(help="time a calibration run: the first cell, one call per estimator")
    ] = True,
):
    """Print a study's expected time, peak memory and scores on disk per cell, without running it."""
    import jax

    from mivar_jax.models import CheckpointError
    from mivar_jax.study import ConfigError, Study
    from mivar_jax.study.plan import plan

    if device is not None:
        if device not in ("cpu", "gpu", "tpu"):
            _fail(f"--device {device!r}: choose cpu, gpu or tpu")
        jax.config.update("jax_platforms", "cuda" if device == "gpu" else device)
        try:
            jax.devices()
        except Exception as e:  # noqa: BLE001 - JAX raises RuntimeError (or AssertionError) for a missing platform
            _fail(f"--device {device}: JAX finds no such device here ({type(e).__name__}{f': {e}' if str(e) else ''})")
    _compilation_cache()
    try:
        p = plan(Study.from_file(study) if study is not None else Study(), calibrate=calibrate)
    except (ConfigError, CheckpointError) as e:
        _fail(str(e))
    mib = lambda n: f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"
    table = Table(title=f"plan of {p.study}: {p.model} ({p.edges:,} edges) on {p.device}")
    for col in ("cell", "method", "inputs", "per call × calls", "seconds", "peak memory", "scores"):
        table.add_column(col, justify="left" if col in ("cell", "method") else "right")
    for r in p.rows:
        secs = "–" if r["seconds"] is None else f"{r['seconds']:.1f}"
        scores = mib(r["scores_bytes"]) + (" (shards)" if r["scores_sharded"] else "")
        table.add_row(r["cell"], r["method"], str(r["inputs"]), f"{r['batch']} × {r['calls']}", secs,
                      mib(r["peak_bytes"]), scores)  # fmt: skip
    console.print(table)
    total = "not calibrated" if p.total_seconds is None else f"{p.total_seconds / 60:.1f} min of cells"
    calib = "" if p.calibration_seconds is None else f" (calibration took {p.calibration_seconds:.0f} s)"
    room = "unknown" if p.device_bytes is None else mib(p.device_bytes)
    console.print(
        f"total: {total}{calib}; peak memory {mib(p.peak_bytes)} of {room} (weights {mib(p.weights_bytes)}); "
        f"scores on disk {mib(p.scores_bytes)}"
        + ("; (shards): larger than estimator.scores_memory_kib, written to disk as they are computed"
           if any(r["scores_sharded"] for r in p.rows) else ""),
        highlight=False, soft_wrap=True,
    )  # fmt: skip


def _compilation_cache() -> None:
    """Kernels compiled by one run are reused by the next (JAX's persistent compilation cache, at
    most 4 GiB, least recently used first out): in $JAX_COMPILATION_CACHE_DIR when set, else
    $XDG_CACHE_HOME/mivar_jax/xla (~/.cache/…); MIVAR_COMPILATION_CACHE=0 turns it off."""
    import jax

    if os.environ.get("MIVAR_COMPILATION_CACHE", "1") == "0":
        return
    if jax.config.jax_compilation_cache_dir is None:
        root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        jax.config.update("jax_compilation_cache_dir", os.path.join(root, "mivar_jax", "xla"))
    if jax.config.jax_compilation_cache_max_size == -1:
        jax.config.update("jax_compilation_cache_max_size", 4 * 2**30)


def _paper_summary(found: dict, run_dir: str) -> None:
    from mivar_jax.study.paper import summary_lines

    for line in summary_lines(found) if found else []:  # (nothing on the processes that do not write)
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    console.print(
        f"run directory: {run_dir}\nfindings: {os.path.join(run_dir, 'findings.md')} (each task's report: "
        f"{os.path.join(run_dir, '<task>', 'report.html')})",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )


@app.command("report")
def report_cmd(run_dir: Annotated[Path, typer.Argument(help="a run directory")]):
    """Rebuild results/ and report.html of a run from its finished cells."""
    from mivar_jax.report import write_report
    from mivar_jax.study import RunDir, RunDirError, analyse, paper

    if paper.is_paper_run(run_dir):
        try:
            analysed = {}
            for task in paper.task_dirs(run_dir):
                rd = RunDir.open(task)
                analysed[os.path.basename(task)] = results = analyse(rd)
                write_report(rd, results)
            found = paper.analyse_paper(run_dir, analysed)
        except (RunDirError, RuntimeError) as e:
            _fail(str(e))
        _paper_summary(found, str(run_dir))
        return
    try:
        rd = RunDir.open(run_dir)
        results = analyse(rd)
        write_report(rd, results)
    except (RunDirError, RuntimeError) as e:
        _fail(str(e))
    _summary(results, str(run_dir))


@app.command("compare")
def compare_cmd(
    runs: Annotated[list[Path], typer.Argument(help="two or more finished run directories")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="folder for compare.html (default: runs/compare-<time>)")
    ] = None,
):
    """Set finished runs side by side: headline tables, curves overlaid, Jaccard between their circuits."""
    from mivar_jax.report import write_comparison
    from mivar_jax.study import RunDirError

    if len(runs) < 2:
        _fail("compare needs at least two run directories")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        path = write_comparison(runs, out or Path("runs") / f"compare-{stamp}")
    except RunDirError as e:
        _fail(str(e))
    console.print(f"comparison: {path}")


@app.command()
def models():
    """Registered model names (sources can also be HF directories, GGUF files or cached hub names)."""
    from mivar_jax.models import registered_models

    table = Table("name", "what it is", title="registered models")
    for name, text in registered_models().items():
        table.add_row(name, text)
    console.print(table)
    from mivar_jax.models.loading import GGUF_FAMILIES, HF_FAMILIES

    console.print(
        "Also accepted as model.source: a local Hugging Face checkpoint directory (model_type "
        f"{', '.join(sorted(HF_FAMILIES))}), a .gguf file (architecture {', '.join(sorted(GGUF_FAMILIES))}), "
        "or a hub name already in the local HF cache."
    )


@app.command()
def tasks():
    """Tasks, their paraphrase families, counterfactual types and metric."""
    from mivar_jax.tasks import list_tasks

    table = Table("task", "families (templates)", "counterfactuals", "metric", "description", title="tasks")
    for name, t in list_tasks().items():
        fams = ", ".join(f"{f} ({len(v)})" for f, v in t["families"].items())
        table.add_row(name, fams, ", ".join(t["counterfactuals"]), t["metric"], t["description"])
    console.print(table)


@app.command("show-default")
def show_default(
    preset: Annotated[str, typer.Argument(help="default (a study file) or paper (the paper preset)")] = "default",
):
    """Print the default study (or the paper preset) as TOML: a starting point for your own."""
    from mivar_jax.study import default_config, paper

    if preset not in PRESETS:
        _fail(f"no preset {preset!r}; choose from {list(PRESETS)}")
    sys.stdout.write(default_config().to_toml() if preset == "default" else paper.preset_text())


def main() -> None:  # the console script
    app()


if __name__ == "__main__":
    main()
