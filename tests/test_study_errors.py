"""Bad study input through the ``mivar`` command: one line naming the key (or the directory), no
traceback, and no run directory left behind, including for the checks that need the model."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from mivar_jax.cli import app
from mivar_jax.study import rundir as rundir_module


def _study(tmp_path, source: str, **sections: dict[str, str]) -> str:
    """A tiny study file (TOML) on ``source``; ``sections`` overrides keys (TOML literals), e.g.
    ``circuits={"sizes": "[20, 500]"}``."""
    parts = {
        "model": {"source": f'"{source}"'},
        "data": {"n": "8", "families": '["transfer"]', "counterfactuals": '["abc"]'},
        "estimator": {"methods": '["eap"]'},
        "circuits": {"sizes": "[6, 20]"},
        "bootstrap": {"replicates": "4", "size": "20"},
        "reference": {"inputs": "3"},
    }
    for name, keys in sections.items():
        parts[name] = {**parts.get(name, {}), **keys}
    text = 'name = "bad"\n' + "".join(
        f"\n[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()) for name, keys in parts.items()
    )
    path = tmp_path / "study.toml"
    path.write_text(text)
    return str(path)


def _fails_in_one_line(tmp_path, study: str, out=None) -> str:
    out = out or tmp_path / "run"
    r = CliRunner().invoke(app, ["run", study, "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.stdout == "", r.output
    assert r.stderr.startswith("error: ") and r.stderr.strip().count("\n") == 0, r.stderr
    assert not os.path.exists(out), "a run directory was left behind"
    return r.stderr


@pytest.mark.parametrize(("value", "shown"), [("nan", "nan"), ("inf", "inf"), ("-inf", "-inf")])
def test_non_finite_noise(tmp_path, hf_dirs, value, shown):
    study = _study(tmp_path, hf_dirs["gpt2"][0], data={"noise": f"[0.0, {value}]"})
    assert f"data.noise[1] = {shown} is not a finite number" in _fails_in_one_line(tmp_path, study)


def test_bad_model_source(tmp_path):
    study = _study(tmp_path, str(tmp_path / "no-such-model"))
    err = _fails_in_one_line(tmp_path, study)
    assert err.startswith("error: model.source: ") and "no-such-model" in err


def test_unreadable_checkpoint(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    err = _fails_in_one_line(tmp_path, _study(tmp_path, str(folder)))
    assert err.startswith("error: model.source: ") and "config.json" in err


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"circuits": {"sizes": "[20, 500]"}}, "circuits.sizes [500] exceed the 110 edges"),
        ({"reference": {"edges": "111"}}, "reference.edges = 111 exceeds the 110 edges"),
        ({"data": {"n": "100000000000"}}, "data.n + data.holdout = 100000000020 exceeds the"),
    ],
)
def test_checks_against_the_model_come_before_the_run_directory(tmp_path, hf_dirs, sections, message):
    err = _fails_in_one_line(tmp_path, _study(tmp_path, hf_dirs["gpt2"][0], **sections))
    assert message in err
    if "data.n" in message:
        assert "distinct pairs task 'ioi'" in err and "family 'transfer', counterfactual 'abc'" in err


def test_read_only_output_directory(tmp_path, hf_dirs, monkeypatch):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    if os.access(parent, os.W_OK):  # root ignores the mode: make the check see what a user would
        real = os.access
        monkeypatch.setattr(
            rundir_module.os, "access", lambda p, mode: False if str(p) == str(parent) else real(p, mode)
        )
    try:
        out = parent / "run"
        err = _fails_in_one_line(tmp_path, _study(tmp_path, hf_dirs["gpt2"][0]), out=out)
        assert f"cannot create the run directory {out}: {parent} is not writable" in err
    finally:
        parent.chmod(0o755)


def test_output_inside_a_file(tmp_path, hf_dirs):
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" / "run"
    err = _fails_in_one_line(tmp_path, _study(tmp_path, hf_dirs["gpt2"][0]), out=out)
    assert f"{tmp_path / 'notes.txt'} is not a directory" in err


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"XDG_CACHE_HOME": "{tmp}"}, "{tmp}/mivar_jax/xla"),  # the default: the user's cache directory
        ({"XDG_CACHE_HOME": "{tmp}", "JAX_COMPILATION_CACHE_DIR": "{tmp}/mine"}, "{tmp}/mine"),  # JAX's own setting
        ({"XDG_CACHE_HOME": "{tmp}", "MIVAR_COMPILATION_CACHE": "0"}, "None"),  # turned off
    ],
)
def test_the_cli_keeps_compiled_kernels_between_runs(tmp_path, env, expected):
    """`mivar run` turns on JAX's persistent compilation cache (in a fresh process: the setting is
    read before the first compilation), unless told otherwise."""
    import subprocess
    import sys

    env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    base = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "MIVAR_COMPILATION_CACHE")}
    code = (
        "import jax; from mivar_jax.cli import _compilation_cache; _compilation_cache(); "
        "print(jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=base | env, capture_output=True, text=True, check=True)
    where, size = out.stdout.split()
    assert where == expected.format(tmp=tmp_path)
    assert int(size) == (-1 if where == "None" else 4 * 2**30)
