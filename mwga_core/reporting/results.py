"""Finished runs and sweeps read back from disk, grouped by what was swept, with seeds aggregated.

A *run folder* holds ``results.json``; a *sweep folder* holds job folders with ``results.json`` and
``.hydra/overrides.yaml`` (:func:`job_dirs`, :func:`job_overrides`; the sweep callback reads them too). Jobs whose overrides differ only in
``seed`` form one :class:`Group`; its metrics are the mean and sample standard deviation over them.

A sweep job that stopped on a user error leaves ``failed.json`` instead (:func:`write_job_failure`,
:func:`failed_job_dirs`): the sweep's summary lists it with its error, and reports leave it out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mwga_core.api.errors import DataError, MwgaUserError
from mwga_core.storage.atomic import write_json_atomic

#: the override that marks repetitions of one setting rather than a setting of its own
SEED_KEY = "seed"
#: what a sweep job that stopped on a user error leaves in its folder: the error and its exit code
FAILED_JOB = "failed.json"


def job_order(job_dir: Path) -> tuple[bool, int, str]:
    """Sort key of job folders: by job number (Hydra names them 0, 1, ...), then by name."""
    return (not job_dir.name.isdigit(), int(job_dir.name) if job_dir.name.isdigit() else 0, job_dir.name)


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep that left a results.json (and did not fail), in job-number order."""
    jobs = [p.parent for p in sweep_dir.glob("*/results.json") if not (p.parent / FAILED_JOB).exists()]
    return sorted(jobs, key=job_order)


def write_job_failure(job_dir: Path, error: MwgaUserError) -> None:
    """Record in a sweep job's folder that it stopped on ``error`` (``failed.json``)."""
    record = {"error": str(error), "type": type(error).__name__, "exit_code": int(error.exit_code)}
    write_json_atomic(Path(job_dir) / FAILED_JOB, record)


def forget_job_failure(job_dir: Path) -> None:
    """Remove the ``failed.json`` an earlier sweep into the same folder may have left."""
    (Path(job_dir) / FAILED_JOB).unlink(missing_ok=True)


def failed_job_dirs(sweep_dir: Path) -> dict[Path, dict[str, Any]]:
    """``job folder -> {"error", "type", "exit_code"}`` of the sweep's failed jobs, in job-number order.

    A ``failed.json`` that cannot be read still marks its job as failed (exit code 2).
    """
    failed = {}
    for path in sorted((p.parent for p in sweep_dir.glob(f"*/{FAILED_JOB}")), key=job_order):
        try:
            record = json.loads((path / FAILED_JOB).read_text())
            record = {**record, "error": str(record["error"]), "exit_code": int(record.get("exit_code", 2))}
        except (OSError, ValueError, KeyError, TypeError) as error:
            record = {"error": f"{FAILED_JOB} cannot be read ({error})", "exit_code": 2}
        failed[path] = record
    return failed


def job_overrides(job_dir: Path) -> dict[str, str]:
    """A job's task overrides (``.hydra/overrides.yaml``) as ``{key: value}``."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}
    entries = yaml.safe_load(path.read_text()) or []
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


@dataclass(frozen=True)
class Stat:
    """A metric over ``n`` seeds: mean and sample standard deviation (0 for a single seed)."""

    mean: float
    std: float
    n: int

    @staticmethod
    def of(values: list[float | None]) -> Stat:
        finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        if not finite:
            return Stat(math.nan, math.nan, 0)
        mean = sum(finite) / len(finite)
        if len(finite) < 2:
            return Stat(mean, 0.0, len(finite))
        variance = sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)
        return Stat(mean, math.sqrt(variance), len(finite))


@dataclass
class Job:
    """One finished run: its folder, its overrides (keys without ``+``/``~``) and its results.json."""

    path: Path
    overrides: dict[str, str]
    results: dict[str, Any]


@dataclass
class Group:
    """Jobs with the same swept values; several jobs here are seeds of one setting.

    Attributes:
        values: swept key -> value as written on the command line, e.g. ``{"descriptor.bins": "16"}``.
        mean: metric -> :class:`Stat` of the mean-over-patterns value.
        per_pattern: pattern -> metric -> :class:`Stat`.
    """

    values: dict[str, str]
    jobs: list[Job]
    mean: dict[str, Stat] = field(default_factory=dict)
    per_pattern: dict[str, dict[str, Stat]] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.jobs[0].results.get("method", "custom"))

    @property
    def seeds(self) -> list[int]:
        return sorted({int(job.results.get("config", {}).get("seed", 0)) for job in self.jobs})

    def setting(self, dotted: str) -> Any:
        """A resolved config value of this group's first job, e.g. ``setting("descriptor.bins")``."""
        node: Any = self.jobs[0].results.get("config", {})
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node


@dataclass
class ResultSet:
    """The jobs of one run or sweep folder, grouped.

    Attributes:
        swept: override keys other than ``seed`` whose value differs between jobs, in override order.
        metric_names: metrics in results.json order.
    """

    path: Path
    jobs: list[Job]
    swept: list[str]
    groups: list[Group]
    metric_names: list[str]

    @property
    def experiment_name(self) -> str:
        return str(self.jobs[0].results.get("config", {}).get("experiment_name", "") or "")

    @property
    def has_seeds(self) -> bool:
        return any(len(group.jobs) > 1 for group in self.groups)


def _normalise(overrides: dict[str, str]) -> dict[str, str]:
    return {key.lstrip("+~"): value for key, value in overrides.items() if not key.startswith("hydra.")}


def _load_job(path: Path) -> Job:
    results_path = path / "results.json"
    try:
        results = json.loads(results_path.read_text())
        results["metrics"]["mean"]  # noqa: B018 - the one field every report needs
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{results_path} is not an mwga results.json ({error!r})") from None
    return Job(path=path, overrides=_normalise(job_overrides(path)), results=results)


def _sort_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def group_jobs(path: Path, jobs: list[Job]) -> ResultSet:
    """Group ``jobs`` by their swept overrides and aggregate each group's metrics over seeds."""
    keys: list[str] = []
    for job in jobs:
        keys += [key for key in job.overrides if key not in keys]
    varying = [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]
    swept = [k for k in varying if k != SEED_KEY]
    groups: dict[tuple[str, ...], Group] = {}
    for job in jobs:
        values = tuple(job.overrides.get(k, "") for k in swept)
        groups.setdefault(values, Group(dict(zip(swept, values, strict=True)), []))
        groups[values].jobs.append(job)
    ordered = list(groups.values())
    if len(swept) == 1 and swept[0] != "method":
        ordered.sort(key=lambda g: _sort_key(g.values[swept[0]]))
    metric_names = list(jobs[0].results["metrics"]["mean"])
    for group in ordered:
        _aggregate(group, metric_names)
    return ResultSet(path=path, jobs=jobs, swept=swept, groups=ordered, metric_names=metric_names)


def _aggregate(group: Group, metric_names: list[str]) -> None:
    group.mean = {
        m: Stat.of([job.results["metrics"]["mean"].get(m) for job in group.jobs]) for m in metric_names
    }
    patterns: list[str] = []
    for job in group.jobs:
        patterns += [p for p in job.results["metrics"].get("per_pattern", {}) if p not in patterns]
    group.per_pattern = {
        pattern: {
            m: Stat.of(
                [job.results["metrics"].get("per_pattern", {}).get(pattern, {}).get(m) for job in group.jobs]
            )
            for m in metric_names
        }
        for pattern in patterns
    }


def _result_folders(path: Path) -> list[Path]:
    """Run and sweep folders at or below ``path``: a job folder counts as part of its sweep."""
    if (path / "results.json").is_file() or job_dirs(path):
        return [path]
    folders: set[Path] = set()
    for results in path.rglob("results.json"):
        job = results.parent
        folders.add(job.parent if (job.parent / "multirun.yaml").is_file() else job)
    return sorted(folders)


def load_result_sets(path: Path) -> list[ResultSet]:
    """Every run or sweep under ``path``, oldest path first (sweep folders are named by date and time).

    Raises:
        MwgaUserError: ``path`` does not exist or holds no results.json at any depth.
    """
    path = Path(path)
    if not path.is_dir():
        raise MwgaUserError(f"{path} is not a folder: expected a run folder or a sweep folder of mwga")
    sets = []
    for folder in _result_folders(path):
        if (folder / "results.json").is_file():
            jobs = [_load_job(folder)]
        else:
            jobs = [_load_job(job) for job in job_dirs(folder)]
        sets.append(group_jobs(folder, jobs))
    if not sets:
        raise MwgaUserError(
            f"no results in {path}: expected results.json (a run folder) or <job>/results.json "
            "(a sweep folder) at or below it. Did the run finish?"
        )
    return sets
