"""The run directory: the one place where a study's results live on disk.

Layout (``FORMAT_VERSION`` in ``manifest.json``)::

    manifest.json          format, version, status ("running" | "complete"), timestamps
    config.toml / .json    the resolved study config (every key)
    environment.json       package versions, devices, processes, git commit
    data/<dataset>.npz     each dataset of the grid (TaskData)
    cells/<cell>/          one finished cell: cell.json (last), scores.safetensors, …
    cells/.partial/<cell>/ a cell in progress; its finished stages are reused on resume
    reference/             exact reference scores (a cell like the others)
    results/               study-level tables and statistics (rewritten at the end of each run)
    figures/, report.html  the report

A cell is written into ``cells/.partial/<cell>`` and renamed to ``cells/<cell>`` when complete
(an atomic rename), so a reader, a crash or ``kill -9`` sees a cell whole or not at all. Every
file is itself written atomically (temporary file, fsync, rename). One process at a time holds
the directory (an advisory lock released by the OS on any exit).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import importlib.metadata
import json
import math
import os
import platform
import shutil
import subprocess
from typing import Any

import jax

from mivar_jax._io import atomic_write_text
from mivar_jax.study.config import StudyConfig

FORMAT = "mivar-run"
FORMAT_VERSION = 1
PACKAGES = ("mivar_jax", "jax", "jaxlib", "flax", "numpy", "scipy", "transformers", "tokenizers", "gguf", "safetensors")


class RunDirError(RuntimeError):
    """A directory that cannot be used as (or resumed as) a run directory; says why."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def write_json(path: str, obj: Any) -> None:
    """Atomically, as strict JSON: NaN and ±inf (e.g. a faithfulness whose full and empty metrics
    coincide) are written as null."""
    atomic_write_text(path, json.dumps(_finite(obj), indent=1, allow_nan=False) + "\n")


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def environment() -> dict[str, Any]:
    """What produced a run: package versions, devices, processes, platform, git commit."""
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            versions[p] = None
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, check=False, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "packages": versions,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "git_commit": commit or None,
        "time": _now(),
    }


class RunDir:
    """A run directory (see the module docstring). ``create`` a new one or ``open`` one to resume."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.abspath(os.fspath(path))
        self._lock_file = None

    # ------------------------------------------------------------------ paths
    def file(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def cell_dir(self, cell_id: str) -> str:
        return self.file("cells", cell_id)

    def partial_dir(self, cell_id: str) -> str:
        return self.file("cells", ".partial", cell_id)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, path: str | os.PathLike, config: StudyConfig) -> RunDir:
        rd = cls(path)
        if os.path.exists(rd.file("manifest.json")):
            raise RunDirError(f"{rd.path} already holds a run; resume it with `mivar run --resume {rd.path}`")
        if os.path.isdir(rd.path) and os.listdir(rd.path):
            raise RunDirError(f"{rd.path} exists and is not empty; choose a new directory for the run")
        os.makedirs(rd.file("cells", ".partial"), exist_ok=True)
        rd.lock()
        atomic_write_text(rd.file("config.toml"), config.to_toml())
        write_json(rd.file("config.json"), config.to_dict())
        write_json(rd.file("environment.json"), environment())
        write_json(
            rd.file("manifest.json"),
            {"format": FORMAT, "format_version": FORMAT_VERSION, "status": "running", "created": _now()},
        )
        return rd

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunDir:
        """An existing run directory, checked: refused if it is not one or is of another version."""
        rd = cls(path)
        if not os.path.isdir(rd.path):
            raise RunDirError(f"{rd.path}: no such run directory")
        try:
            manifest = read_json(rd.file("manifest.json"))
        except FileNotFoundError:
            raise RunDirError(f"{rd.path} is not a mivar run directory (no manifest.json)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RunDirError(f"{rd.path}/manifest.json is unreadable ({err})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise RunDirError(f"{rd.path} is not a mivar run directory (manifest format {manifest!r})")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise RunDirError(
                f"{rd.path} was written in run-directory format {version}; this mivar_jax "
                f"({importlib.metadata.version('mivar_jax')}) reads format {FORMAT_VERSION}. Re-run the study "
                "into a new directory, or resume it with the mivar_jax version that created it."
            )
        return rd

    @property
    def manifest(self) -> dict[str, Any]:
        return read_json(self.file("manifest.json"))

    @property
    def config(self) -> StudyConfig:
        return StudyConfig.from_dict(read_json(self.file("config.json")))

    def set_status(self, status: str, **extra: Any) -> None:
        write_json(self.file("manifest.json"), {**self.manifest, "status": status, "updated": _now(), **extra})

    def lock(self) -> None:
        """Hold the directory for this process (released on exit, even on kill -9)."""
        if self._lock_file is not None:
            return
        f = open(self.file(".lock"), "a+")  # noqa: SIM115 - held open for the life of the run
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise RunDirError(f"{self.path} is in use by another running study") from None
        self._lock_file = f

    def unlock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # ------------------------------------------------------------------ cells
    def is_done(self, cell_id: str) -> bool:
        return os.path.exists(os.path.join(self.cell_dir(cell_id), "cell.json"))

    def done_cells(self) -> list[str]:
        root = self.file("cells")
        if not os.path.isdir(root):
            return []
        return sorted(c for c in os.listdir(root) if not c.startswith(".") and self.is_done(c))

    @contextlib.contextmanager
    def cell(self, cell_id: str):
        """``with rd.cell(id) as work_dir:`` write the cell's files into ``work_dir``; on normal exit
        the cell is committed (atomic rename), on an exception it stays partial for a resume."""
        final = self.cell_dir(cell_id)
        if os.path.exists(final):
            raise RunDirError(f"cell {cell_id} is already complete in {self.path}")
        work = self.partial_dir(cell_id)
        os.makedirs(work, exist_ok=True)
        for name in os.listdir(work):  # temporary files of an interrupted write
            if ".tmp" in name:
                os.remove(os.path.join(work, name))
        yield work
        if not os.path.exists(os.path.join(work, "cell.json")):
            raise RunDirError(f"cell {cell_id} finished without writing cell.json")
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.rename(work, final)
        _fsync_dir(os.path.dirname(final))

    def discard_partial(self) -> None:
        shutil.rmtree(self.file("cells", ".partial"), ignore_errors=True)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
