"""A sweep job that fails on a user error: the other jobs run, the summary marks it, `mwga -m` exits 2.

`mwga -m descriptor.bins=0,8` used to stop at the failing job (its SystemExit ended Hydra's launcher)
and wrote no summary. Now the failing job prints its one-line error and leaves failed.json; the callback
writes summary.csv/summary.md with the error in an `error` column and `mwga` exits with the job's code.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mwga_core.reporting.results import FAILED_JOB, job_dirs
from mwga_core.reporting.sweep import aggregate_sweep

#: a subprocess is only stopped when it hangs, never because the machine is busy
HUNG_S = 3600
SMALL = ["method=ours_simulated", "dataset.num_clips=60", "dataset.queries_per_pattern=1"]
BINS_ERROR = "descriptor.bins=0 is not allowed: expected an integer >= 1."


def sweep(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MWGA_")}
    env["MWGA_CACHE_DIR"] = str(tmp_path / "cache")
    return subprocess.run(
        [sys.executable, "-m", "mwga_core.cli.main", "-m", *args, *SMALL, "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=HUNG_S,
    )


def summary_rows(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_failed_job_is_marked_in_the_summary_and_the_sweep_exits_2(tmp_path: Path, launcher: str) -> None:
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    done = sweep(tmp_path, "descriptor.bins=0,8,16", *extra)  # the first job fails
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"error: {BINS_ERROR}" in done.stderr  # the job's own one-line error, as it fails
    closing = " ".join(done.stderr.split())
    assert "error: 1 of 3 sweep jobs failed (job 0 (descriptor.bins=0))" in closing

    folder = tmp_path / "sweep"
    assert json.loads((folder / "0" / FAILED_JOB).read_text())["error"] == BINS_ERROR
    assert [job.name for job in job_dirs(folder)] == ["1", "2"]  # the jobs after it ran
    rows = summary_rows(folder)
    assert [(row["job"], row["descriptor.bins"]) for row in rows] == [("0", "0"), ("1", "8"), ("2", "16")]
    assert rows[0]["error"] == BINS_ERROR and rows[0]["P@5"] == ""
    assert rows[1]["error"] == "" and float(rows[1]["P@5"]) > 0 and float(rows[2]["P@5"]) > 0
    assert BINS_ERROR in (folder / "summary.md").read_text()


def test_a_sweep_without_failures_exits_0_with_the_usual_summary(tmp_path: Path) -> None:
    done = sweep(tmp_path, "descriptor.bins=8,16")
    assert done.returncode == 0, done.stderr[-3000:]
    header = (tmp_path / "sweep" / "summary.csv").read_text().splitlines()[0]
    assert header == "job,descriptor.bins,P@5,P@10,P@20,R@20,MRR,NDCG@20,score_gap,mean_gt_rank"
    assert not list((tmp_path / "sweep").glob(f"*/{FAILED_JOB}"))


def test_a_single_run_with_a_user_error_still_exits_2_and_leaves_no_failed_json(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MWGA_")}
    done = subprocess.run(
        [sys.executable, "-m", "mwga_core.cli.main", "descriptor.bins=0", *SMALL, "hydra.run.dir=run"],
        cwd=tmp_path,
        env=env | {"MWGA_CACHE_DIR": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=HUNG_S,
    )
    assert done.returncode == 2 and done.stderr.strip().endswith(BINS_ERROR)
    assert not (tmp_path / "run" / FAILED_JOB).exists()


def _job(folder: Path, name: str, bins: str, mean: dict | None = None, error: str | None = None) -> None:
    job = folder / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- descriptor.bins={bins}\n")
    if mean is not None:
        (job / "results.json").write_text(json.dumps({"metrics": {"mean": mean}}))
    if error is not None:
        (job / FAILED_JOB).write_text(json.dumps({"error": error, "exit_code": 2}))


def test_failed_json_wins_over_a_stale_results_json_and_an_all_failed_sweep_is_summarised(
    tmp_path: Path,
) -> None:
    _job(tmp_path, "0", "4", mean={"mrr": 0.5}, error="bins too small | really")  # a reused sweep folder
    _job(tmp_path, "1", "8", mean={"mrr": 0.75})
    headers, rows = aggregate_sweep(tmp_path)
    assert headers == ["job", "descriptor.bins", "mrr", "error"]
    assert rows == [["0", "4", "", "bins too small | really"], ["1", "8", 0.75, ""]]

    only_failures = tmp_path / "all-failed"
    _job(only_failures, "0", "0", error="no")
    _job(only_failures, "1", "-1", error="neither")
    headers, rows = aggregate_sweep(only_failures)
    assert headers == ["job", "descriptor.bins", "error"] and [r[-1] for r in rows] == ["no", "neither"]
