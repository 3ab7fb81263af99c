"""``mwga report`` on fabricated run and sweep folders: detection, seed aggregation, file formats, errors."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest

from mwga_core.api.errors import MwgaUserError
from mwga_core.cli.main import main
from mwga_core.reporting.builder import build_report
from mwga_core.reporting.paper import paper_values
from mwga_core.reporting.results import Stat, load_result_sets
from mwga_core.reporting.tables import to_latex

PATTERNS = ["horizontal_pan", "vertical_tilt", "diagonal_slide", "rotation_cw", "zoom_in", "random"]
METRICS = ["P@5", "P@10", "P@20", "R@20", "MRR", "NDCG@20", "score_gap", "mean_gt_rank"]


def fake_metrics(base: float) -> dict:
    """Per-pattern metrics that differ by pattern; the mean row is their mean, as in results.json."""
    per_pattern = {
        p: {m: base + 0.01 * i + 0.001 * j for j, m in enumerate(METRICS)} for i, p in enumerate(PATTERNS)
    }
    mean = {m: statistics.fmean(per_pattern[p][m] for p in PATTERNS) for m in METRICS}
    return {"per_pattern": per_pattern, "mean": mean}


def write_job(
    folder: Path,
    overrides: list[str],
    base: float,
    method: str = "ours",
    experiment: str = "",
    **config: object,
) -> Path:
    """A job folder as mwga writes it: results.json and .hydra/overrides.yaml."""
    (folder / ".hydra").mkdir(parents=True)
    settings = dict(
        seed=0,
        experiment_name=experiment,
        dataset={"num_clips": 200},
        descriptor={"bins": 8},
        projection={"dim": 128},
    )
    for override in overrides:
        key, value = override.lstrip("+").split("=", 1)
        if key == "seed":
            settings["seed"] = int(value)
    settings.update(config)
    document = {"method": method, "config": settings, "metrics": fake_metrics(base)}
    (folder / "results.json").write_text(json.dumps(document))
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return folder


def write_sweep(root: Path, jobs: list[tuple[list[str], float]], **kwargs: object) -> Path:
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("{}\n")
    for number, (overrides, base) in enumerate(jobs):
        write_job(root / str(number), overrides, base, **kwargs)
    return root


def test_paper_table1_mean_row_is_the_mean_of_its_patterns():
    """Catches a mistyped digit: the paper's mean row must be the mean of its six rows (4-digit rounding)."""
    table = paper_values()["tables"]["table1"]
    for metric in ["P@5", "P@10", "P@20", "R@20", "MRR", "NDCG@20"]:
        mean = statistics.fmean(table["rows"][p][metric] for p in PATTERNS)
        assert mean == pytest.approx(table["rows"]["mean"][metric], abs=1e-4), metric


def test_paper_default_setting_rows_agree_across_tables():
    tables = paper_values()["tables"]
    main_row = tables["table1"]["rows"]["mean"]
    for table, row in (("table3", "8"), ("table4", "128"), ("table5", "200")):
        for metric, value in tables[table]["rows"][row].items():
            assert value == main_row[metric], (table, metric)


def test_seeds_aggregate_to_mean_and_sample_std(tmp_path: Path):
    bases = {"4": [0.10, 0.14, 0.21], "16": [0.30, 0.31, 0.35]}
    jobs = [
        ([f"descriptor.bins={b}", f"seed={s}"], base)
        for b, values in bases.items()
        for s, base in enumerate(values)
    ]
    sweep = write_sweep(tmp_path / "sweep", jobs)

    (result_set,) = load_result_sets(sweep)
    assert result_set.swept == ["descriptor.bins"]
    assert [g.values["descriptor.bins"] for g in result_set.groups] == ["4", "16"]
    for group, values in zip(result_set.groups, bases.values(), strict=True):
        expected = [v + 0.001 * METRICS.index("MRR") + 0.01 * 2.5 for v in values]  # mean over patterns
        stat = group.mean["MRR"]
        assert stat.n == 3
        assert stat.mean == pytest.approx(statistics.fmean(expected))
        assert stat.std == pytest.approx(statistics.stdev(expected))
        zoom = group.per_pattern["zoom_in"]["P@20"]
        assert zoom.std == pytest.approx(statistics.stdev([v + 0.04 + 0.002 for v in values]))

    report = build_report(sweep, tmp_path / "out")
    markdown = (tmp_path / "out" / "table3_bins.md").read_text()
    first = result_set.groups[0].mean["MRR"]
    assert f"{first.mean:.4f} ± {first.std:.4f}" in markdown
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "table3_bins.csv").read_text())))
    assert float(rows[1]["MRR std"]) == pytest.approx(result_set.groups[1].mean["MRR"].std)
    assert rows[1]["MRR n"] == "3"
    assert float(rows[1]["MRR (paper)"]) == 0.2903  # the paper's B=16 row
    assert set(report.figures) == {"fig4_bins"}


def test_single_run_gives_table1_with_paper_columns(tmp_path: Path):
    run = write_job(tmp_path / "run", [], 0.2)
    report = build_report(run)
    assert (run / "report" / "fig1_precision_at_k.png").stat().st_size > 1000
    assert (run / "report" / "fig2_score_gap.png").is_file()
    table = report.tables["table1_main"]
    assert table.headers[:3] == ["Pattern", "P@5", "P@5 (paper)"]
    zoom = next(row for row in table.rows if row[0] == "Zoom-in")
    assert zoom[table.headers.index("MRR (paper)")] == 1.0
    mean_row = table.rows[-1]
    assert mean_row[0] == "Mean"
    assert mean_row[table.headers.index("Mean GT rank (paper)")] == 102.38
    assert mean_row[table.headers.index("Mean GT rank")] == Stat(
        fake_metrics(0.2)["mean"]["mean_gt_rank"], 0.0, 1
    )


def test_latex_table_is_well_formed(tmp_path: Path):
    sweep = write_sweep(
        tmp_path / "sweep",
        [
            ([f"method={m}"], 0.1 * i)
            for i, m in enumerate(["ours", "random", "appearance", "flow_magnitude"])
        ],
    )
    for number, method in enumerate(["ours_simulated", "random", "appearance", "flow_magnitude"]):
        path = sweep / str(number) / "results.json"
        document = json.loads(path.read_text())
        document["method"] = method
        path.write_text(json.dumps(document))
    report = build_report(sweep)
    latex = to_latex(report.tables["table2_baselines"])
    lines = latex.strip().splitlines()
    assert lines[0] == r"\begin{tabular}{lrrrrrrrr}"
    assert lines[-1] == r"\end{tabular}"
    body = [line for line in lines if line.endswith(r"\\")]
    assert len(body) == 5  # header + 4 methods
    assert {line.count("&") for line in body} == {8}
    assert r"flow\_magnitude" not in latex and "Flow magnitude" in latex  # paper names, escaped text
    assert r"Ours (motion grad.) [ours\_simulated]" in latex
    assert (sweep / "report" / "table2_baselines.tex").read_text() == latex
    assert "fig3_baselines" in report.figures


def test_two_swept_keys_give_the_summary_only(tmp_path: Path):
    jobs = [([f"descriptor.bins={b}", f"projection.dim={p}"], 0.1) for b in (4, 8) for p in (32, 64)]
    report = build_report(write_sweep(tmp_path / "sweep", jobs))
    assert set(report.tables) == {"summary"}
    assert report.figures == {}
    assert report.tables["summary"].headers[:3] == ["descriptor.bins", "projection.dim", "seeds"]


def test_folder_of_sweeps_reports_each_with_preset_suffix(tmp_path: Path):
    root = tmp_path / "multirun"
    write_sweep(
        root / "table5_corpus" / "t1",
        [([f"dataset.num_clips={n}"], 0.1) for n in (50, 500)],
        experiment="table5_corpus",
        method="ours_simulated",  # the preset's own method: no suffix
    )
    write_sweep(
        root / "table4_projection_real" / "t1",
        [([f"projection.dim={p}"], 0.1) for p in (32, 256)],
        experiment="table4_projection_real",
    )
    write_sweep(  # +experiment=table3_bins method=ours: the method is the suffix
        root / "table3_bins" / "t1",
        [([f"descriptor.bins={b}"], 0.1) for b in (4, 16)],
        experiment="table3_bins",
        method="ours",
    )
    report = build_report(root)
    assert {"table5_corpus", "table4_projection_real", "table3_bins_ours"} <= set(report.tables)
    assert set(report.figures) == {"fig6_corpus_size", "fig5_projection_real", "fig4_bins_ours"}
    index = (root / "report" / "report.md").read_text()
    assert "![fig6_corpus_size](fig6_corpus_size.png)" in index


def test_folder_without_results_is_a_user_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture):
    empty = tmp_path / "empty_sweep"
    (empty / "0").mkdir(parents=True)
    with pytest.raises(MwgaUserError, match="empty_sweep"):
        load_result_sets(empty)
    assert main(["report", str(empty)]) == 2
    assert "no results in" in capsys.readouterr().err
    with pytest.raises(MwgaUserError, match="missing"):
        load_result_sets(tmp_path / "missing")
