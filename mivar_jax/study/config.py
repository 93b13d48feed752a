"""StudyConfig: one TOML file describing a study, validated on load.

A study is model × task × estimator × hyperparameters × perturbations. Its grid of *cells* (each
one dataset scored by one estimator) crosses the factors

    data.seeds × data.families × data.counterfactuals × data.noise × estimators

in full (``design = "factorial"``), or varies one factor at a time (``design = "one-at-a-time"``,
the paper's design): a base cell at the first level of every factor, and for each factor each other
level with every other factor at its base. ``estimators`` are ``estimator.methods`` ×
``estimator.steps`` (steps only for the methods that integrate: ``eap-ig-inputs``,
``eap-ig-activations``, ``ceap``; one-at-a-time varies the steps on the first of them only). Within each cell the cheap
analyses sweep ``circuits.aggregations`` × ``circuits.sizes`` (selection, bootstrap, evaluation).

Every key is checked: an unknown key, a wrong type or an impossible value raises ``ConfigError``
naming the key (``section.key``) and what is allowed.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import tomllib
import typing
from typing import Any

from mivar_jax.aggregation import AGGREGATIONS
from mivar_jax.estimators import ESTIMATORS, IG_CONVENTIONS, POOLINGS
from mivar_jax.masks import MASK_METHODS
from mivar_jax.models.loading import DTYPES
from mivar_jax.patching import ABLATIONS
from mivar_jax.stats.bootstrap import BOOTSTRAP_METHODS
from mivar_jax.tasks.registry import TASKS

REFERENCE_LEVELS = ("node", "none")
DESIGNS = ("factorial", "one-at-a-time")
ALL_EDGES = -1  # reference.edges: exact scores of every edge
REFERENCE = "reference"  # the name of the reference cell (exact scores) in a run directory


class ConfigError(ValueError):
    """A study file that cannot be run: names the key and what it allows."""


@dataclasses.dataclass(frozen=True)
class ModelSection:
    source: str = "smollm2-135m"  # registered name, HF directory, GGUF file or cached hub name
    dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class DataSection:
    task: str = "ioi"
    n: int = 40  # clean/corrupted pairs per dataset
    seeds: tuple[int, ...] = (0,)  # meta-dataset resampling: one fresh dataset per seed
    families: tuple[str, ...] = ()  # paraphrase families, one dataset each; () = all templates together
    counterfactuals: tuple[str, ...] = ()  # () = the task's first type
    noise: tuple[float, ...] = (0.0,)  # counterfactual-noise amplitudes σ
    prepend_bos: bool = False
    holdout: int = 20  # further pairs per dataset, kept out of discovery: circuits are evaluated on them


@dataclasses.dataclass(frozen=True)
class EstimatorSection:
    methods: tuple[str, ...] = ("eap-ig-inputs",)
    steps: tuple[int, ...] = (5,)
    ablation: str = "patch"
    ig_convention: str = "reference"  # eap-ig-inputs only
    pooling: str = "reference"  # eap-ig-activations only (mivar_jax.estimators.gradient)
    batch_size: int = 0  # inputs per device and call; 0 = sized from memory_budget_mib
    memory_budget_mib: int = 2048
    scores_memory_kib: int = 0  # host memory a job's per-input scores may take, larger ones go to disk in
    # shards beside the cell's scores.safetensors and are read back in blocks (0 = a quarter of this machine's)


@dataclasses.dataclass(frozen=True)
class CircuitsSection:
    sizes: tuple[int, ...] = (25, 50, 100, 200)  # n_edges (top-n before pruning)
    aggregations: tuple[str, ...] = ("mean",)  # circuits are the top-n edges by |aggregated score|, pruned
    evaluate: bool = True  # faithfulness / circuit error / KL of every circuit, held out and in sample
    eval_inputs: int = 20  # in-sample evaluation on k random discovery inputs (study.runner.input_order); 0 = all


@dataclasses.dataclass(frozen=True)
class BootstrapSection:
    replicates: int = 100
    method: str = "multinomial"
    size: int = 100  # the circuit size of the headline verdict (one of circuits.sizes)
    confidence: float = 0.95
    fraction: float = 0.5  # for method = "subsample"


@dataclasses.dataclass(frozen=True)
class StabilitySection:
    """The analyses past the paper (docs/statistics.md), per cell; ``curve`` and ``faithfulness``
    evaluate circuits, so ``circuits.evaluate = false`` skips them too."""

    margins: bool = True  # scoring vs selection variance (stats.selection_noise), every aggregation × size
    prompts_needed: bool = True  # J(m) for m = N/4 … 4N prompts and the m reaching 0.8, at bootstrap.size
    curve: bool = False  # MIB's faithfulness curve with CPR / CMD intervals, on the held-out inputs
    faithfulness: tuple[float, ...] = (0.5,)  # stability of the smallest circuit reaching each f; () = off
    faithfulness_replicates: int = 8  # bootstrap replicates whose circuits are evaluated at every size
    faithfulness_sizes: tuple[int, ...] = ()  # () = the largest circuits.sizes × 2^k, k = 0 … 4 (≤ edges)


@dataclasses.dataclass(frozen=True)
class ReferenceSection:
    """Exact scores as the reference for estimator noise and intrinsic variance, on ``inputs``
    random inputs of the first cell's dataset (``study.runner.input_order``; all of them when
    ``inputs`` ≥ data.n): node level (every node) and, at edge level, ``edges`` random edges (-1:
    every edge) together with the union of each estimator's ``top_k`` edges by |mean score| on
    that dataset (the edges a circuit is made of)."""

    level: str = "node"
    inputs: int = 20
    edges: int = 0  # random edges (seeded with the study's seed); -1 = every edge of the graph
    top_k: int = 0  # plus each estimator's top-k edges of the first dataset


@dataclasses.dataclass(frozen=True)
class MasksSection:
    """Learned-mask cells (``estimator.methods`` with a mask method, ``mivar_jax.masks``): masks of
    ``bootstrap.size`` edges, ``seeds`` seeds on the discovery inputs (seed-to-seed stability) and
    ``replicates`` more on bootstrap replicates of them (data-to-data; 0 = none), compared with
    EAP-IG-inputs' circuit of the same size."""

    seeds: int = 4
    replicates: int = 4
    steps: int = 200
    lr: float = 0.1
    lr_lambda: float = 1.0
    warmup: float = 0.5


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    name: str = "study"
    design: str = "factorial"  # or "one-at-a-time": a base cell and one factor changed at a time
    seed: int = 0  # keys the bootstrap, the evaluation and reference inputs, and the reference's random edges
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    estimator: EstimatorSection = EstimatorSection()
    circuits: CircuitsSection = CircuitsSection()
    bootstrap: BootstrapSection = BootstrapSection()
    stability: StabilitySection = StabilitySection()
    reference: ReferenceSection = ReferenceSection()
    masks: MasksSection = MasksSection()

    # ------------------------------------------------------------------ the grid
    @property
    def estimators(self) -> list[tuple[str, int | None]]:
        """(method, steps) pairs; steps is None for the methods without integration steps. A factorial
        design crosses every method that takes steps with every step count; one-at-a-time varies the
        step count on the first such method only and runs the others at ``estimator.steps[0]`` (a
        pair with both another method and other steps would change two factors of the base cell)."""
        e = self.estimator
        stepped = [m for m in e.methods if m in ESTIMATORS and ESTIMATORS[m].takes_steps]

        def steps(m):
            if m not in stepped:
                return (None,)
            return e.steps if self.design == "factorial" or m == stepped[0] else e.steps[:1]

        return [(m, s) for m in e.methods for s in steps(m)]

    @property
    def scored_estimators(self) -> list[tuple[str, int | None]]:
        """The (method, steps) pairs with per-input scores (every estimator but the mask learners)."""
        return [(m, s) for m, s in self.estimators if m not in MASK_METHODS]

    @property
    def families(self) -> tuple[str, ...]:
        return self.data.families or ("all",)

    @property
    def counterfactuals(self) -> tuple[str, ...]:
        return self.data.counterfactuals or (TASKS[self.data.task].counterfactuals[0],)

    def cells(self) -> list[Cell]:
        """Every cell of the grid, in a fixed order (the order they run and are reported in): the
        full product, or (one-at-a-time) the base cell then each factor's other levels in turn."""
        levels = (self.data.seeds, self.families, self.counterfactuals, self.data.noise, self.estimators)
        if self.design == "factorial":
            coords = list(itertools.product(*levels))
        else:
            base = tuple(v[0] for v in levels)
            coords = [base] + [base[:f] + (v,) + base[f + 1 :] for f, vs in enumerate(levels) for v in vs[1:]]
        return [Cell(seed, fam, cf, noise, m, s) for seed, fam, cf, noise, (m, s) in coords]

    def factors(self) -> dict[str, list]:
        """The grid's factors and their levels, in this order (``cells`` crosses or varies them)."""
        return {
            "seed": list(self.data.seeds),
            "family": list(self.families),
            "counterfactual": list(self.counterfactuals),
            "noise": list(self.data.noise),
            "estimator": [estimator_label(m, s) for m, s in self.estimators],
        }

    def estimator_settings(self, method: str, steps: int | None) -> dict[str, Any]:
        """The settings that define ``method``'s scores in this study (those that do not apply to
        it are left out: ``ig_convention`` is eap-ig-inputs', ``pooling`` eap-ig-activations')."""
        e = self.estimator
        out: dict[str, Any] = {"method": method, "steps": steps, "ablation": e.ablation}
        if method == "eap-ig-inputs":
            out["ig_convention"] = e.ig_convention
        if method == "eap-ig-activations":
            out["pooling"] = e.pooling
        if method in MASK_METHODS:
            out["masks"] = dataclasses.asdict(self.masks)
        return out

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_toml(self) -> str:
        """The config as TOML (every key, defaults included)."""
        d = self.to_dict()
        lines = [f"{k} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict)]
        for section, values in d.items():
            if isinstance(values, dict):
                lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudyConfig:
        """Build and validate a config from nested dicts (missing keys take their defaults)."""
        cfg = _build(cls, d, "")
        _validate(cfg)
        return cfg

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> StudyConfig:
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                text = f.read().decode()
        except OSError as err:
            raise ConfigError(f"cannot read study file {path}: {err.strerror}") from None
        try:
            d = json.loads(text) if path.endswith(".json") else tomllib.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'TOML'}: {err}") from None
        try:
            return cls.from_dict(d)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell of the grid: a dataset (seed, family, counterfactual, noise) and an estimator."""

    seed: int
    family: str
    counterfactual: str
    noise: float
    method: str
    steps: int | None

    @property
    def estimator(self) -> str:
        return estimator_label(self.method, self.steps)

    @property
    def dataset(self) -> str:
        """The name of the cell's dataset (shared by the cells that differ in the estimator only)."""
        return f"s{self.seed}-{self.family}-{self.counterfactual}-n{self.noise:g}"

    @property
    def id(self) -> str:
        """A file-system-safe, human-readable, unique name."""
        return f"{self.dataset}-{self.estimator}"

    @property
    def levels(self) -> dict[str, Any]:
        """The cell's level of each factor of the grid (``StudyConfig.factors``)."""
        return {f: getattr(self, f) for f in ("seed", "family", "counterfactual", "noise", "estimator")}


def estimator_label(method: str, steps: int | None) -> str:
    return method if steps is None else f"{method}-m{steps}"


def default_config() -> StudyConfig:
    """The default study (the main job): smollm2-135m on IOI with EAP-IG-inputs (m = 5), two
    paraphrase families × both counterfactuals of 40 discovery prompts and 20 held-out ones, B = 100
    bootstrap replicates, a sweep of circuit sizes evaluated on the held-out prompts and on 20
    discovery prompts, the margins to the cut, the prompts needed, the stability at faithfulness
    0.5 (8 replicates × 5 sizes), and exact node-level scores of 12 prompts as the estimator-noise
    reference. Measured on a 2-core CPU, cold (no compilation cache): 6 min 50 s (cells 84–103 s:
    scores ~24 s, bootstraps and margins 13–18 s, prompts needed 6–9 s, evaluation 11–17 s,
    faithfulness 25–33 s; reference 33 s)."""
    return StudyConfig.from_dict(
        {
            "name": "default",
            "data": {"task": "ioi", "families": ["transfer", "communication"], "counterfactuals": ["abc", "abb"]},
            "bootstrap": {"replicates": 100, "size": 100},
            "reference": {"level": "node", "inputs": 12},
        }
    )


# ---------------------------------------------------------------------- parsing and validation
def _build(cls, d: Any, where: str):
    """A (section) dataclass from a table; ``where``: the section's key ("" for the study)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where or 'the study'} must be a table (section), got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    key = lambda name: f"{where}.{name}" if where else name
    unknown = sorted(set(d) - set(hints))
    if unknown:
        raise ConfigError(
            f"unknown key {key(unknown[0])!r}; allowed keys{' in [' + where + ']' if where else ''}: {sorted(hints)}"
        )
    kwargs = {}
    for name, value in d.items():
        parse = _build if dataclasses.is_dataclass(hints[name]) else _coerce  # a section, or a value
        kwargs[name] = parse(hints[name], value, key(name))
    return cls(**kwargs)


def _type_name(hint) -> str:
    if typing.get_origin(hint) is tuple:
        return f"a list of {_type_name(typing.get_args(hint)[0]).split(' ', 1)[1]}s"
    return {int: "an integer", float: "a number", str: "a string", bool: "a boolean"}[hint]


def _coerce(hint, value: Any, key: str):
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be {_type_name(hint)}, got {type(value).__name__} {value!r}")
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        raise ConfigError(f"{key} must be {_type_name(hint)}, got {type(value).__name__} {value!r}")
    if hint is float and not math.isfinite(value):
        raise ConfigError(f"{key} = {value!r} is not a finite number")
    return float(value) if hint is float else value


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} = {value!r} is not allowed; choose from {list(allowed)}")


def _distinct(key: str, values, check=None, allowed=None, *, nonempty: bool = True) -> None:
    """``values`` without repeats (and at least one unless not ``nonempty``), each passing
    ``check(key, value, allowed)`` when given."""
    if nonempty and not values:
        raise ConfigError(f"{key} must list at least one value")
    if len(set(values)) != len(values):
        raise ConfigError(f"{key} lists a value twice: {list(values)}")
    for v in values if check is not None else ():
        check(key, v, allowed)


def _at_least(key: str, value, low) -> None:
    if value < low:
        raise ConfigError(f"{key} = {value!r} is impossible; it must be ≥ {low}")


def _validate(c: StudyConfig) -> None:
    if not c.name or not all(ch.isalnum() or ch in "-_." for ch in c.name):
        raise ConfigError(f"name = {c.name!r}: use letters, digits, '-', '_' and '.' only")
    _choice("design", c.design, DESIGNS)
    _choice("model.dtype", c.model.dtype, sorted(DTYPES))
    if not c.model.source:
        raise ConfigError("model.source must name a model (registered name, HF directory or GGUF file)")
    d = c.data
    _choice("data.task", d.task, sorted(TASKS))
    spec = TASKS[d.task]
    _at_least("data.n", d.n, 2)
    _distinct("data.seeds", d.seeds, _at_least, 0)
    _distinct("data.families", d.families, _choice, list(spec.families), nonempty=False)
    _distinct("data.counterfactuals", d.counterfactuals, _choice, spec.counterfactuals, nonempty=False)
    _distinct("data.noise", d.noise, _at_least, 0.0)
    _at_least("data.holdout", d.holdout, 0)
    e = c.estimator
    _distinct("estimator.methods", e.methods)
    if "exact" in e.methods:
        raise ConfigError(
            "estimator.methods: 'exact' scores every edge on every input (hours for a real model); "
            "use [reference] for exact scores on a subset, or mv.attribute(method='exact') directly"
        )
    for m in e.methods:
        _choice(
            "estimator.methods", m, [n for n, est in ESTIMATORS.items() if est.kernel is not None] + list(MASK_METHODS)
        )
    _distinct("estimator.steps", e.steps, _at_least, 1)
    _choice("estimator.ablation", e.ablation, ABLATIONS)
    _choice("estimator.ig_convention", e.ig_convention, IG_CONVENTIONS)
    _choice("estimator.pooling", e.pooling, POOLINGS)
    _at_least("estimator.batch_size", e.batch_size, 0)
    _at_least("estimator.memory_budget_mib", e.memory_budget_mib, 16)
    _at_least("estimator.scores_memory_kib", e.scores_memory_kib, 0)
    mk = c.masks
    _at_least("masks.seeds", mk.seeds, 2)
    if mk.replicates != 0:
        _at_least("masks.replicates", mk.replicates, 2)
    _at_least("masks.steps", mk.steps, 1)
    if not (mk.lr > 0 and mk.lr_lambda > 0 and 0 <= mk.warmup <= 1):
        raise ConfigError(
            f"masks.lr = {mk.lr}, masks.lr_lambda = {mk.lr_lambda} must be > 0 and masks.warmup = {mk.warmup} in [0, 1]"
        )
    ci = c.circuits
    _distinct("circuits.sizes", ci.sizes, _at_least, 1)
    _distinct("circuits.aggregations", ci.aggregations, _choice, AGGREGATIONS)
    _at_least("circuits.eval_inputs", ci.eval_inputs, 0)
    b = c.bootstrap
    _at_least("bootstrap.replicates", b.replicates, 2)
    _choice("bootstrap.method", b.method, BOOTSTRAP_METHODS)
    _choice("bootstrap.size", b.size, ci.sizes)
    for key, p in (("bootstrap.confidence", b.confidence), ("bootstrap.fraction", b.fraction)):
        if not 0 < p < 1:
            raise ConfigError(f"{key} = {p} is impossible; it must lie in (0, 1)")
    if b.method == "disjoint-splits" and d.n // b.replicates < 1:
        raise ConfigError(
            f"bootstrap.replicates = {b.replicates} disjoint splits of data.n = {d.n} inputs leave none per split"
        )
    st = c.stability
    for f in st.faithfulness:
        if not 0 < f <= 1:
            raise ConfigError(f"stability.faithfulness = {f} is impossible; each target must lie in (0, 1]")
    _distinct("stability.faithfulness", st.faithfulness, nonempty=False)
    _at_least("stability.faithfulness_replicates", st.faithfulness_replicates, 2)
    _distinct("stability.faithfulness_sizes", st.faithfulness_sizes, _at_least, 1, nonempty=False)
    if list(st.faithfulness_sizes) != sorted(st.faithfulness_sizes):
        raise ConfigError(f"stability.faithfulness_sizes = {list(st.faithfulness_sizes)} must increase")
    r = c.reference
    _choice("reference.level", r.level, REFERENCE_LEVELS)
    _at_least("reference.inputs", r.inputs, 2)
    _at_least("reference.edges", r.edges, ALL_EDGES)
    _at_least("reference.top_k", r.top_k, 0)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)
