"""Which fine-tuning runs `tools/compare.py` may pool as the seeds of one row.

All runs compared must measure one experiment: the same test set (sha256 of its json; runs on
different test sets are refused), the same detection config (every key but those in
`als_det.detection.results.NOT_EXPERIMENT_KEYS`: model, solver and schedule, input sizes, test
settings), the same number of iterations and the same training data (sha256 of each json). Within
a label strategy, runs whose backbone recipes differ (the pretraining config minus its seed and
run-time keys, `als_det.config.RUNTIME_KEYS`) get separate rows. Within a row every run
must be a new seed (another pretraining seed or fine-tuning seed): a run whose two seeds equal
those of a run already in the row (the same run copied, a rerun of that seed, an `--eval-only` run
of the same weights) is a duplicate, reported and counted once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from als_det.config import RUNTIME_KEYS, saved_config

_SHOW = 5  # differing keys named in an error message


class ResultsError(ValueError):
    """A results.json that cannot be compared; the message names the file."""


@dataclass(frozen=True)
class RunIdentity:
    """What a results.json says about the experiment a run measures and the seeds it stands for."""

    test_set: str  # the test set's name, for messages
    test_sha256: str
    config: Mapping[str, Any]  # experiment-defining detection config keys
    config_fingerprint: str
    iterations: int
    train_sets: tuple[str, ...]  # sha256 of each training json, sorted
    recipe: Mapping[str, Any]  # the backbone's pretraining config, seed and run-time keys left out
    seeds: tuple[int, int]  # (pretraining seed, fine-tuning seed)
    backbone: str  # sha256 of the checkpoint the backbone was converted from (else of the .pkl)
    eval_only: bool


class HasIdentity(Protocol):
    path: Path
    identity: RunIdentity


@dataclass
class Duplicate:
    run: Path
    same_as: Path
    why: str


OLD_RESULTS = (
    "results.json files written before this record existed cannot be pooled safely: "
    "re-run the fine-tuning"
)


def _field(file: Path, data: Mapping[str, Any], *keys: str, why: str = OLD_RESULTS) -> Any:
    node: Any = data
    for key in keys:
        if not isinstance(node, Mapping) or node.get(key) is None:
            raise ResultsError(f"{file}: no {'.'.join(keys)}; {why}")
        node = node[key]
    return node


def _recipe(file: Path, pretrain_yaml: str) -> tuple[dict[str, Any], int]:
    """(the pretraining config minus its seed and run-time keys, its seed)."""
    try:
        flat = saved_config(pretrain_yaml)
    except (yaml.YAMLError, KeyError, ValueError, TypeError) as e:
        raise ResultsError(
            f"{file}: backbone.pretrain_config is not a readable pretraining config: {e}"
        ) from e
    return {k: v for k, v in flat.items() if k not in RUNTIME_KEYS and k != "SEED"}, flat["SEED"]


def read_identity(file: Path, data: Mapping[str, Any]) -> RunIdentity:
    """The identity of one run from its results.json (`data`); ResultsError naming `file` and the
    missing record otherwise."""
    test = _field(file, data, "test_dataset")
    backbone = _field(file, data, "backbone")
    recipe, config_seed = _recipe(
        file,
        _field(
            file,
            data,
            "backbone",
            "pretrain_config",
            why="the backbone records no pretraining config (was it converted from an als_det "
            "pretraining checkpoint?), so neither its recipe nor its seed can be checked",
        ),
    )
    eval_only = bool(data.get("eval_only", False))
    if eval_only and data.get("training") is None:
        raise ResultsError(
            f"{file}: an --eval-only run of weights that do not record how they were fine-tuned, "
            "so the seed it measures is unknown; compare the fine-tuning run itself"
        )
    pretrain_seed = int(backbone.get("pretrain_seed", config_seed))
    return RunIdentity(
        test_set=test,
        test_sha256=_field(file, data, "datasets", test, "json_sha256"),
        config=_field(file, data, "detection_config", "values"),
        config_fingerprint=_field(file, data, "detection_config", "fingerprint"),
        iterations=int(_field(file, data, "iterations")),
        train_sets=tuple(sorted(_field(file, data, "training", "train_sets").values())),
        recipe=recipe,
        seeds=(pretrain_seed, int(_field(file, data, "training", "seed"))),
        backbone=backbone.get("source_sha256") or _field(file, data, "backbone", "sha256"),
        eval_only=eval_only,
    )


def check_one_experiment(runs: Sequence[HasIdentity]) -> None:
    """ResultsError unless every run measures the first run's experiment: test set first, then
    detection config, iterations and training data, each difference named."""
    by_test: dict[str, list[HasIdentity]] = {}
    for r in runs:
        by_test.setdefault(r.identity.test_sha256, []).append(r)
    if len(by_test) > 1:
        sets = "; ".join(
            f"{group[0].identity.test_set} (json sha256 {sha[:12]}...): "
            + ", ".join(str(r.path) for r in group)
            for sha, group in by_test.items()
        )
        raise ResultsError(
            f"refusing to pool or compare runs evaluated on different test sets: {sets}. "
            "AP on different test sets measures different things; compare runs of one test set"
        )
    first = runs[0]
    for r in runs[1:]:
        problems = _differences(first.identity, r.identity)
        if problems:
            raise ResultsError(
                f"{r.path} and {first.path} are runs of different experiments and cannot be pooled "
                f"or compared: {'; '.join(problems)}. Compare runs of one detection config, "
                "schedule and training data"
            )


def _differences(a: RunIdentity, b: RunIdentity) -> list[str]:
    problems = []
    if a.config_fingerprint != b.config_fingerprint:
        keys = sorted(
            k for k in set(a.config) | set(b.config) if a.config.get(k) != b.config.get(k)
        )
        shown = ", ".join(f"{k} {b.config.get(k)!r} vs {a.config.get(k)!r}" for k in keys[:_SHOW])
        more = f" (and {len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
        problems.append(f"detection config differs: {shown or 'fingerprints differ'}{more}")
    if a.iterations != b.iterations:
        problems.append(f"{b.iterations} vs {a.iterations} fine-tuning iterations")
    if a.train_sets != b.train_sets:
        problems.append("trained on different data (training json sha256 differs)")
    return problems


def recipe_differences(runs: Sequence[HasIdentity]) -> list[str]:
    """The pretraining keys outside LABELS (which the label strategy names) whose values differ
    among `runs`: a row for each recipe."""
    keys = sorted({k for r in runs for k in r.identity.recipe if not k.startswith("LABELS.")})
    return [k for k in keys if len({repr(r.identity.recipe.get(k)) for r in runs}) > 1]


def drop_duplicates(runs: Sequence[HasIdentity]) -> tuple[list[HasIdentity], list[Duplicate]]:
    """(one run per pair of seeds, the others as Duplicates). A fine-tuning run is kept over an
    `--eval-only` run of the same seeds, otherwise the first given."""
    kept: dict[tuple[int, int], HasIdentity] = {}
    duplicates = []
    for r in sorted(runs, key=lambda r: r.identity.eval_only):
        seen = kept.get(r.identity.seeds)
        if seen is None:
            kept[r.identity.seeds] = r
            continue
        if r.identity.eval_only:
            why = "an --eval-only run of the same seeds, not a new seed"
        elif r.identity.backbone == seen.identity.backbone:
            why = "same backbone and seeds"
        else:
            why = (
                "same seeds from another copy of the pretraining "
                "(a rerun of that seed, not a new seed)"
            )
        duplicates.append(Duplicate(r.path, seen.path, why))
    order = {id(r): i for i, r in enumerate(runs)}
    return sorted(kept.values(), key=lambda r: order[id(r)]), duplicates
