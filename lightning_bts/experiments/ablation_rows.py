"""The rows of an ablation, read from YAML (``configs/ablation/best_recipe.yaml``), and where each row's files go.

Why a YAML file: the reader of the report should see each ingredient as the exact ``scripts/fit.py`` overrides
that add it, and a new ingredient is a new row, not new code. The file::

    reference: paper              # every gain is also measured against this row
    common: [--data.fold=0, ...]  # overrides of every trained row (the split, size, loaders)
    recipe: configs/best_cpu.yaml # where ``from_recipe`` reads its values
    rows:
      - name: paper               # folder name under the runs folder
        label: paper recipe       # the table's first column
        config: configs/paper_bce.yaml   # a trained row starting afresh from this config
        args: [--data.image_size=128]
        curve: true               # drawn in dice_vs_minutes.png
      - name: norm
        args: [--data.num_workers=2]     # a trained row: the trained row above (or ``base``) plus these
        from_recipe: [model.norm]        # ... plus --model.norm=<the recipe's value>
      - name: postprocessing
        select: postprocessing    # no training: a copy of ``from``'s checkpoint (default: the trained row above),
                                  # post-processing chosen on validation ("postprocessing": no TTA; "tta": TTA allowed)
      - name: best_60min
        best_run: true            # the checkpoint of ``--best-run DIR`` (not trained here; left out without it)
        compare: tta              # "gain over previous" is over this row (default: the row above)

Rows are cumulative: a trained row without ``config`` starts from its ``base`` row's configs and overrides and
appends its own ``args``, then its ``from_recipe`` keys, so the last ``--option=value`` wins, as on fit.py's
command line. ``from_recipe`` names an ingredient by its dotted key and takes the value from the recipe's config:
when the recipe changes (a new learning rate), its ablation follows without a second copy of the value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lightning_bts.errors import UserError

SELECTIONS = ("postprocessing", "tta")
ROW_KEYS = {"name", "label", "config", "args", "from_recipe", "base", "select", "from", "best_run", "compare",
            "curve"}
TOP_KEYS = {"reference", "common", "recipe", "rows"}
# Set by the runner for every trained row (its folder, its budget); a row setting them would be overridden.
RESERVED = ("--output_dir", "--run_name", "--version", "--ckpt_path", "--trainer.max_time")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TRAIN_VERSION = "train"  # fit.py's --version: a trained row's run is RUNS/<row>/train/


class AblationError(UserError):
    """The ablation cannot run as asked (a bad rows file, an unknown row, a missing run); the message says why."""


@dataclass(frozen=True)
class Row:
    """One row, resolved: ``kind`` is ``train``, ``select`` (no training) or ``best_run`` (an existing run).

    ``configs`` and ``args`` are the full, cumulative fit.py arguments of a trained row (empty otherwise);
    ``source`` is the row whose checkpoint a ``select`` row copies; ``compare`` is the row of "gain over
    previous" (``None`` for the first row).
    """

    name: str
    label: str
    kind: str
    configs: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    select: str | None = None
    source: str | None = None
    compare: str | None = None
    curve: bool = False

    def fit_args(self) -> list[str]:
        """The row's fit.py arguments before the runner's own (folder, budget, cache, extra arguments)."""
        return [arg for config in self.configs for arg in ("--config", config)] + list(self.args)


@dataclass(frozen=True)
class Ablation:
    """The rows of a rows file, in order, and the reference row's name."""

    path: Path
    rows: tuple[Row, ...]
    reference: str

    def row(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        raise AblationError(f"unknown row {name!r}; the rows of {self.path} are: {', '.join(self.names())}")

    def names(self) -> list[str]:
        return [row.name for row in self.rows]

    def pick(self, names: list[str] | None) -> list[Row]:
        """The rows named (in the file's order), all rows for ``None``; an unknown name is an error."""
        if names is None:
            return list(self.rows)
        wanted = {self.row(name).name for name in names}
        return [row for row in self.rows if row.name in wanted]


def _overrides(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(arg, str) for arg in value):
        raise AblationError(f"{where}: expected a list of '--option=value' strings, got {value!r}")
    for arg in value:
        if not arg.startswith("--") or "=" not in arg:
            raise AblationError(f"{where}: {arg!r} is not one '--option=value' string (write the value after '=')")
        if arg.split("=", 1)[0] in RESERVED:
            raise AblationError(f"{where}: {arg.split('=', 1)[0]} is set by the ablation runner for every row "
                                "(--minutes sets the budget); remove it")
    return tuple(value)


def _read_yaml(path: Path, what: str) -> Any:
    """The parsed YAML of ``path``; ``what`` names the file in the error (``rows file``, ``recipe``)."""
    if not path.is_file():
        raise AblationError(f"{what} {path} not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise AblationError(f"{what} {path} is not valid YAML: {error}") from None


@dataclass(frozen=True)
class Recipe:
    """The config that ``from_recipe`` reads its values from (``recipe:`` in the rows file)."""

    path: Path
    values: dict[str, Any]

    @classmethod
    def load(cls, value: Any, where: str, base_dir: Path) -> Recipe:
        path = Path(_config_path(value, where, base_dir))
        values = _read_yaml(path, "recipe")
        if not isinstance(values, dict):
            raise AblationError(f"{where}: {path} is not a mapping of options")
        return cls(path, values)

    def overrides(self, keys: Any, where: str) -> tuple[str, ...]:
        """``--key=value`` for each dotted key, with the value this config gives it (JSON for non-strings)."""
        if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
            raise AblationError(f"{where}: from_recipe: expected a list of dotted keys like model.lr, got {keys!r}")
        overrides = []
        for key in keys:
            value: Any = self.values
            for part in key.split("."):
                if not isinstance(value, dict) or part not in value:
                    raise AblationError(f"{where}: from_recipe: {key} is not set in {self.path}")
                value = value[part]
            overrides.append(f"--{key}={value if isinstance(value, str) else json.dumps(value)}")
        return _overrides(overrides, f"{where}: from_recipe")


def _recipe_overrides(keys: Any, recipe: Recipe | None, where: str) -> tuple[str, ...]:
    if keys is None:
        return ()
    if recipe is None:
        raise AblationError(f"{where}: from_recipe needs a top-level 'recipe: CONFIG' to read the values from")
    return recipe.overrides(keys, where)


def _config_path(value: Any, where: str, base_dir: Path) -> str:
    if not isinstance(value, str):
        raise AblationError(f"{where}: config must be a path, got {value!r}")
    for candidate in (Path(value), base_dir / value):
        if candidate.is_file():
            return str(candidate)
    raise AblationError(f"{where}: config file {value} not found")


def _refer(entry: dict[str, Any], key: str, default: str | None, known: dict[str, Row], where: str) -> str | None:
    target = entry.get(key, default)
    if target is not None and target not in known:
        raise AblationError(f"{where}: {key}: no row {target!r} above this one")
    return target


def _parse_row(entry: Any, index: int, rows: list[Row], common: tuple[str, ...], recipe: Recipe | None,
               path: Path, base_dir: Path) -> Row:
    """One entry of ``rows``, resolved against the rows above it."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise AblationError(f"{path}: row {index + 1} needs a 'name' (got {entry!r})")
    name = entry["name"]
    where = f"{path}: row {name!r}"
    known = {row.name: row for row in rows}
    if not NAME_PATTERN.match(name):
        raise AblationError(f"{where}: a name may hold letters, digits, '_', '-', '.' only (it is a folder)")
    if name in known:
        raise AblationError(f"{where}: the name is used twice")
    unknown = set(entry) - ROW_KEYS
    if unknown:
        raise AblationError(f"{where}: unknown key(s) {sorted(unknown)}; expected some of {sorted(ROW_KEYS)}")
    select = entry.get("select")
    if select is not None and select not in SELECTIONS:
        raise AblationError(f"{where}: select must be one of {', '.join(SELECTIONS)}, got {select!r}")
    fields = {"name": name, "label": str(entry.get("label", name)), "select": select,
              "compare": _refer(entry, "compare", rows[-1].name if rows else None, known, where),
              "curve": bool(entry.get("curve", False))}
    if entry.get("best_run"):
        if {"config", "args", "from_recipe", "base", "from"} & set(entry):
            raise AblationError(f"{where}: a best_run row takes its run from --best-run: no config, args, "
                                "from_recipe, base or from")
        return Row(kind="best_run", **fields)
    if select is not None:
        if {"config", "args", "from_recipe", "base"} & set(entry):
            raise AblationError(f"{where}: a select row trains nothing: no config, args, from_recipe or base")
        source = _refer(entry, "from", next((r.name for r in reversed(rows) if r.kind != "select"), None), known, where)
        if source is None or known[source].kind == "select":
            raise AblationError(f"{where}: from: needs a trained or best_run row above it to copy the checkpoint of")
        return Row(kind="select", source=source, **fields)
    args = _overrides(entry.get("args"), f"{where}: args") + _recipe_overrides(entry.get("from_recipe"), recipe, where)
    if "config" in entry and "base" not in entry:
        return Row(kind="train", configs=(_config_path(entry["config"], where, base_dir),), args=common + args,
                   **fields)
    trained_above = next((row.name for row in reversed(rows) if row.kind == "train"), None)
    base = _refer(entry, "base", trained_above, known, where)
    if base is None or known[base].kind != "train":
        raise AblationError(f"{where}: a trained row needs a 'config' or a trained row above it ('base') to build on")
    configs = known[base].configs
    if "config" in entry:
        configs += (_config_path(entry["config"], where, base_dir),)
    return Row(kind="train", configs=configs, args=known[base].args + args, **fields)


def parse_rows(data: Any, path: Path, base_dir: Path | None = None) -> Ablation:
    """Validate a rows mapping (as read from ``path``) and resolve every row; ``config`` paths are looked up as
    given, then under ``base_dir`` (the repository).

    Raises:
        AblationError: an unknown key, a duplicate or bad name, a row that refers to an unknown row, a bad
            override, a missing config file, a ``from_recipe`` key the recipe does not set. The message names the
            row and the key.
    """
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not data["rows"]:
        raise AblationError(f"{path}: expected a mapping with a non-empty list 'rows'")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise AblationError(f"{path}: unknown key(s) {sorted(unknown)}; expected {sorted(TOP_KEYS)}")
    common = _overrides(data.get("common"), f"{path}: common")
    base_dir = base_dir or Path.cwd()
    recipe = None if data.get("recipe") is None else Recipe.load(data["recipe"], f"{path}: recipe", base_dir)
    rows: list[Row] = []
    for index, entry in enumerate(data["rows"]):
        rows.append(_parse_row(entry, index, rows, common, recipe, path, base_dir))
    reference = data.get("reference", rows[0].name)
    if reference not in {row.name for row in rows}:
        raise AblationError(f"{path}: reference: no row {reference!r}")
    return Ablation(path, tuple(rows), reference)


def load_rows(path: str | Path, base_dir: str | Path | None = None) -> Ablation:
    """Read and validate a rows file (see the module docstring).

    Raises:
        AblationError: the file is missing, is not YAML, or its rows are invalid (:func:`parse_rows`).
    """
    path = Path(path)
    return parse_rows(_read_yaml(path, "rows file"), path, Path(base_dir) if base_dir else None)


@dataclass(frozen=True)
class RowFiles:
    """Where one row's files live under the runs folder: ``RUNS/<row>/``.

    ``row.json`` (written when training or selection is done: command, checkpoint, run folder, commit) and
    ``test/metrics.json`` (evaluate.py's; its presence marks the row finished) for every row; ``train/`` (fit.py's
    run folder) for trained rows; ``selected.ckpt`` (the copy holding the choice) for select rows.
    """

    folder: Path

    @classmethod
    def of(cls, runs_dir: str | Path, name: str) -> RowFiles:
        return cls(Path(runs_dir) / name)

    @property
    def record(self) -> Path:
        return self.folder / "row.json"

    @property
    def run_dir(self) -> Path:
        return self.folder / TRAIN_VERSION

    @property
    def selected(self) -> Path:
        return self.folder / "selected.ckpt"

    @property
    def evaluation(self) -> Path:
        return self.folder / "test"

    @property
    def metrics(self) -> Path:
        return self.evaluation / "metrics.json"

    def finished(self) -> bool:
        return self.record.is_file() and self.metrics.is_file()
