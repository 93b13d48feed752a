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

Integrity (format 2): when a cell is committed, its ``cell.json`` records the SHA-256 of every
other file of the cell (``checksums``: path relative to the cell → hex digest). ``check_cell``
compares them; a resume recomputes a damaged cell (keeping its intact files, e.g. the scores),
and the analysis refuses one, naming the file. Format 1 (no checksums; evaluation on the first
inputs of each dataset) is still read, its cells unverified, but not resumed.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
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
FORMAT_VERSION = 2  # 2: cell checksums, random evaluation and reference inputs, estimator.pooling
READ_VERSIONS = (1, 2)  # format 1 is read (report) but not resumed
PACKAGES = ("mivar_jax", "jax", "jaxlib", "flax", "numpy", "scipy", "transformers", "tokenizers", "gguf", "safetensors")


class RunDirError(RuntimeError):
    """A directory that cannot be used as (or resumed as) a run directory; says why."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def write_json(path: str | os.PathLike, obj: Any) -> None:
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
    """A JSON file of a run directory; unparseable content is a ``RunDirError`` naming the file."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return json.loads(raw.decode())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunDirError(f"{path} is not valid JSON ({err})") from None


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: str) -> list[str]:
    """Every file under ``folder``, as sorted paths relative to it with '/' separators."""
    out = []
    for root, _, names in os.walk(folder):
        out += [os.path.relpath(os.path.join(root, n), folder).replace(os.sep, "/") for n in names]
    return sorted(out)


def environment() -> dict[str, Any]:
    """What produced a run: package versions, devices, processes, platform, git commit."""
    versions, commit = dict.fromkeys(PACKAGES), ""
    for p in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[p] = importlib.metadata.version(p)
    here = os.path.dirname(os.path.abspath(__file__))
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, check=False, timeout=10
        ).stdout.strip()
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
        self.format_version = FORMAT_VERSION

    # ------------------------------------------------------------------ paths
    def file(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def cell_dir(self, cell_id: str) -> str:
        return self.file("cells", cell_id)

    def partial_dir(self, cell_id: str) -> str:
        return self.file("cells", ".partial", cell_id)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def check_new(cls, path: str | os.PathLike) -> None:
        """Refuse, without creating anything, a path that cannot become a new run directory: one
        that holds a run or other files, is not a directory, or lies in a read-only place."""
        rd = cls(path)
        if os.path.exists(rd.file("manifest.json")):
            raise RunDirError(f"{rd.path} already holds a run; resume it with `mivar run --resume {rd.path}`")
        if os.path.exists(rd.path) and not os.path.isdir(rd.path):
            raise RunDirError(f"{rd.path} exists and is not a directory; choose a new directory for the run")
        if os.path.isdir(rd.path) and os.listdir(rd.path):
            raise RunDirError(f"{rd.path} exists and is not empty; choose a new directory for the run")
        here = rd.path
        while not os.path.exists(here):
            here = os.path.dirname(here)
        if not os.path.isdir(here):
            raise RunDirError(f"cannot create the run directory {rd.path}: {here} is not a directory")
        if not os.access(here, os.W_OK | os.X_OK):
            raise RunDirError(f"cannot create the run directory {rd.path}: {here} is not writable")

    @classmethod
    def create(cls, path: str | os.PathLike, config: StudyConfig) -> RunDir:
        cls.check_new(path)
        rd = cls(path)
        try:
            os.makedirs(rd.file("cells", ".partial"), exist_ok=True)
        except OSError as err:
            raise RunDirError(f"cannot create the run directory {rd.path}: {err.strerror}") from None
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
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise RunDirError(f"{rd.path} is not a mivar run directory (manifest format {manifest!r})")
        if (version := manifest.get("format_version")) not in READ_VERSIONS:
            raise RunDirError(
                f"{rd.path} was written in run-directory format {version}; this mivar_jax "
                f"({importlib.metadata.version('mivar_jax')}) reads formats {list(READ_VERSIONS)}. Re-run the "
                "study into a new directory, or resume it with the mivar_jax version that created it."
            )
        rd.format_version = version
        return rd

    def check_resumable(self) -> None:
        """Refuse to add cells to a run of an older format (its cells were computed differently)."""
        if self.format_version != FORMAT_VERSION:
            raise RunDirError(
                f"{self.path} was written in run-directory format {self.format_version} (no checksums, circuits "
                f"evaluated on the first inputs); this mivar_jax resumes format {FORMAT_VERSION} only. "
                f"`mivar report {self.path}` still reads it; re-run the study into a new directory to finish it."
            )

    def fix_hint(self) -> str:
        """How to repair a damaged cell of this run (the tail of an error message)."""
        if self.format_version == FORMAT_VERSION:
            return f"recompute it with `mivar run --resume {self.path}`"
        return "this run's format cannot be resumed by this mivar_jax: re-run the study into a new directory"

    @property
    def manifest(self) -> dict[str, Any]:
        return read_json(self.file("manifest.json"))

    @property
    def config(self) -> StudyConfig:
        d = read_json(self.file("config.json"))
        if isinstance(d, dict) and isinstance(d.get("estimator"), dict):
            d["estimator"].setdefault("pooling", "source")  # runs from before estimator.pooling used "source"
        if isinstance(d, dict) and isinstance(d.get("data"), dict) and "stability" not in d:
            # runs from before held-out evaluation and [stability]: resumed as they were started
            d["data"].setdefault("holdout", 0)
            d["stability"] = {"margins": False, "prompts_needed": False, "curve": False, "faithfulness": []}
        return StudyConfig.from_dict(d)

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
        names = os.listdir(root) if os.path.isdir(root) else []
        return sorted(c for c in names if not c.startswith(".") and self.is_done(c))

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
        info_path = os.path.join(work, "cell.json")
        if not os.path.exists(info_path):
            raise RunDirError(f"cell {cell_id} finished without writing cell.json")
        sums = {rel: sha256(os.path.join(work, rel)) for rel in _files(work) if rel != "cell.json"}
        write_json(info_path, {**read_json(info_path), "checksums": sums})
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.rename(work, final)
        _fsync_dir(os.path.dirname(final))

    def check_cell(self, cell_id: str) -> list[tuple[str, str]]:
        """A finished cell's damaged files as (path in the cell, what is wrong), [] when intact.
        A cell without checksums (format 1) is unverified: only its cell.json is checked."""
        folder = self.cell_dir(cell_id)
        try:
            info = read_json(os.path.join(folder, "cell.json"))
        except (RunDirError, OSError):
            return [("cell.json", "unreadable")]
        if not isinstance(info, dict) or not isinstance(info.get("checksums", {}), dict):
            return [("cell.json", "not a cell record")]
        problems = []
        for rel, digest in sorted(info.get("checksums", {}).items()):
            path = os.path.join(folder, rel)
            if not os.path.isfile(path):
                problems.append((rel, "missing"))
            elif sha256(path) != digest:
                problems.append((rel, "checksum mismatch"))
        return problems

    def damage(self, cell_id: str) -> str | None:
        """A one-line description of a finished cell's first damaged file, or None."""
        problems = self.check_cell(cell_id)
        if not problems:
            return None
        rel, why = problems[0]
        more = f" (and {len(problems) - 1} more files)" if len(problems) > 1 else ""
        return f"{rel} damaged ({why}){more}"

    def reopen(self, cell_id: str) -> None:
        """Move a damaged finished cell back to partial, keeping only the files whose checksums
        still match (a resume reuses intact scores and recomputes the rest)."""
        final, work = self.cell_dir(cell_id), self.partial_dir(cell_id)
        bad = {rel for rel, _ in self.check_cell(cell_id)}
        keep = set() if "cell.json" in bad else set(_files(final)) - bad - {"cell.json"}
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(os.path.dirname(work), exist_ok=True)
        os.rename(final, work)
        for rel in _files(work):
            if rel not in keep:
                os.remove(os.path.join(work, rel))
        _fsync_dir(os.path.dirname(final))

    def discard_partial(self) -> None:
        shutil.rmtree(self.file("cells", ".partial"), ignore_errors=True)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
