"""Flow accuracy against the benchmark's exact ground truth: ``mwga flow-eval``.

For each estimator and motion pattern it reports the average endpoint error (EPE, the mean over pixels
of ``||flow - gt||`` in px) and the 1/3/5-px accuracies (the fraction of pixels whose endpoint error is
below 1, 3 and 5 px), plus the same over all clips.

Region. Pixels within ``border`` px of the frame edge (default 4) are left out. Near the edge a warped
frame shows texture that was outside the previous frame (the generator fills it by reflection), so the
ground-truth flow there cannot be recovered from the two frames, and every estimator also pads its
windows there. On the benchmark (<= 2 px per frame pair) a 4-px border keeps exactly the pixels whose
destination stays inside the frame with room to spare. ``--border 0`` evaluates the full frame.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mwga_core.api.clips import ClipSet
from mwga_core.api.context import RunContext
from mwga_core.api.errors import MwgaUserError
from mwga_core.api.motion import MotionEstimator

ACCURACY_THRESHOLDS = (1.0, 3.0, 5.0)
METRIC_NAMES = ("epe", "acc_1px", "acc_3px", "acc_5px")
METRIC_HEADERS = {"epe": "EPE (px)", "acc_1px": "< 1 px", "acc_3px": "< 3 px", "acc_5px": "< 5 px"}
OVERALL = "all"


@dataclass
class FlowScore:
    """Accuracy of one estimator on one pattern (or ``all``)."""

    estimator: str
    pattern: str
    epe: float
    acc_1px: float
    acc_3px: float
    acc_5px: float
    clips: int
    pixels: int
    seconds: float


def endpoint_error(flow: np.ndarray, gt_flow: np.ndarray) -> np.ndarray:
    """Per-pixel endpoint error.

    Shape:
        flow, gt_flow: (..., H, W, 2).
        returns: (..., H, W) float64.
    """
    difference = flow.astype(np.float64) - gt_flow.astype(np.float64)
    return np.hypot(difference[..., 0], difference[..., 1])


def interior_mask(height: int, width: int, border: int) -> np.ndarray:
    """True for pixels at least ``border`` px from every edge.

    Shape:
        returns: (H, W) bool.
    """
    if border < 0 or 2 * border >= min(height, width):
        raise MwgaUserError(
            f"--border {border} leaves no pixel of a {height}x{width} frame; "
            f"expected 0 <= border <= {(min(height, width) - 1) // 2}."
        )
    mask = np.zeros((height, width), dtype=bool)
    mask[border : height - border, border : width - border] = True
    return mask


def flow_metrics(flow: np.ndarray, gt_flow: np.ndarray, border: int = 0) -> dict[str, float]:
    """EPE and 1/3/5-px accuracy of ``flow`` over the pixels ``border`` px inside the frame.

    Shape:
        flow, gt_flow: (..., H, W, 2).
    """
    errors = endpoint_error(flow, gt_flow)
    errors = errors[..., interior_mask(*errors.shape[-2:], border)]
    metrics = {"epe": float(errors.mean())}
    for threshold in ACCURACY_THRESHOLDS:
        metrics[f"acc_{threshold:g}px"] = float((errors < threshold).mean())
    return metrics


def evaluate_estimator(
    label: str,
    estimator: MotionEstimator,
    clips: ClipSet,
    class_names: list[str],
    ctx: RunContext,
    border: int,
) -> tuple[list[FlowScore], np.ndarray]:
    """Run one estimator on ``clips`` and score it per pattern and overall.

    Returns the scores (one per pattern present, then ``all``) and the flows (N, T-1, H, W, 2).
    """
    if clips.gt_flow is None:
        raise MwgaUserError("the dataset has no ground-truth flow; flow-eval needs the synthetic benchmark.")
    start = time.perf_counter()
    flows = estimator.estimate(clips.frames, ctx)
    seconds = time.perf_counter() - start
    scores = []
    groups = [(name, clips.labels == index) for index, name in enumerate(class_names)]
    groups.append((OVERALL, np.ones(len(clips), dtype=bool)))
    for pattern, selected in groups:
        if not selected.any():
            continue
        metrics = flow_metrics(flows[selected], clips.gt_flow[selected], border)
        pixels = int(selected.sum()) * flows.shape[1] * int(interior_mask(*flows.shape[2:4], border).sum())
        scores.append(
            FlowScore(label, pattern, **metrics, clips=int(selected.sum()), pixels=pixels, seconds=seconds)
        )
    return scores, flows


# -- estimator specs and overrides ---------------------------------------------------------------


def parse_estimator_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``dis:preset=fast:finest_scale=0`` -> (``dis``, {preset: fast, finest_scale: 0})."""
    import yaml

    name, *assignments = spec.strip().split(":")
    fields = {}
    for assignment in assignments:
        if "=" not in assignment:
            raise MwgaUserError(f"--estimators entry {spec!r}: {assignment!r} is not FIELD=VALUE.")
        key, value = assignment.split("=", 1)
        fields[key.strip()] = yaml.safe_load(value)
    return name, fields


def parse_set_overrides(assignments: list[str]) -> dict[str, dict[str, Any]]:
    """``["motion.checkpoint=x", "dis.preset=fast", "dataset.size=64"]`` -> {target: {field: value}}.

    ``motion.FIELD`` applies to every estimator whose config has FIELD; ``NAME.FIELD`` to estimator NAME
    only; ``dataset.FIELD`` to the benchmark.
    """
    import yaml

    overrides: dict[str, dict[str, Any]] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        target, dot, field_name = key.partition(".")
        if not sep or not dot or not field_name:
            raise MwgaUserError(
                f"--set {assignment!r}: expected TARGET.FIELD=VALUE, e.g. motion.checkpoint=raft.pth"
            )
        overrides.setdefault(target.strip(), {})[field_name.strip()] = yaml.safe_load(value)
    return overrides


def build_estimators(
    specs: list[str], overrides: dict[str, dict[str, Any]], host: Any
) -> dict[str, MotionEstimator]:
    """Instantiate every estimator spec with its overrides (label -> estimator)."""
    registry = host.registry("motion")
    estimators: dict[str, MotionEstimator] = {}
    used_motion_fields: set[str] = set()
    for spec in specs:
        name, fields = parse_estimator_spec(spec)
        schema = registry.get(name).config
        field_names = set(schema.__dataclass_fields__)
        config = {}
        for field_name, value in overrides.get("motion", {}).items():
            if field_name in field_names:
                config[field_name] = value
                used_motion_fields.add(field_name)
        config.update(overrides.get(name, {}))
        config.update(fields)
        unknown = sorted(set(config) - field_names)
        if unknown:
            raise MwgaUserError(
                f"motion {name!r} has no field(s) {unknown}; its fields: {sorted(field_names - {'name'})}."
            )
        estimators[spec.strip()] = host.build("motion", {**config, "name": name})
    unused = sorted(set(overrides.get("motion", {})) - used_motion_fields)
    if unused:
        raise MwgaUserError(f"--set motion.{unused[0]}: no chosen estimator has a field {unused[0]!r}.")
    return estimators


# -- outputs ----------------------------------------------------------------------------------------


def safe_file_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


def write_outputs(scores: list[FlowScore], out_dir: Path, settings: dict[str, Any]) -> None:
    """flow_eval.json (settings + scores), flow_eval.csv and flow_eval.md in ``out_dir``."""
    from mwga_core.reporting.run_outputs import markdown_table

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [asdict(score) for score in scores]
    document = {"settings": settings, "scores": rows}
    (out_dir / "flow_eval.json").write_text(json.dumps(document, indent=2) + "\n")
    with open(out_dir / "flow_eval.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    headers = ["Estimator", "Pattern"] + [METRIC_HEADERS[m] for m in METRIC_NAMES]
    (out_dir / "flow_eval.md").write_text(markdown_table(headers, table_rows(scores)))


def table_rows(scores: list[FlowScore]) -> list[list[str]]:
    return [
        [s.estimator, s.pattern.replace("_", " ")]
        + [f"{s.epe:.3f}", f"{s.acc_1px:.3f}", f"{s.acc_3px:.3f}", f"{s.acc_5px:.3f}"]
        for s in scores
    ]


def print_table(scores: list[FlowScore], title: str) -> None:
    from rich.table import Table

    from mwga_core.reporting.run_outputs import table_console

    table = Table(title=title, title_justify="left")
    table.add_column("Estimator")
    table.add_column("Pattern")
    for metric in METRIC_NAMES:
        table.add_column(METRIC_HEADERS[metric], justify="right")
    for score, row in zip(scores, table_rows(scores), strict=True):
        table.add_row(*row, end_section=score.pattern == OVERALL)
    table_console().print(table)


def save_flow_pictures(
    out_dir: Path, clips: ClipSet, class_names: list[str], flows: dict[str, np.ndarray], upscale: int = 4
) -> list[Path]:
    """One PNG per pattern: frame 0, the true flow, then each estimator's flow, of the pattern's first clip.

    All panels of a picture share one colour scale (the true flow's largest speed), so a saturation
    difference is an error. The shown flows are also written as ``<pattern>_<estimator>.flo``.
    """
    from mwga_core.api.motion import to_grey
    from mwga_core.reporting.flow_io import flow_to_colour, write_flo, write_png

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index, pattern in enumerate(class_names):
        found = np.flatnonzero(clips.labels == index)
        if found.size == 0:
            continue
        clip = int(found[0])
        gt = clips.gt_flow[clip, 0]
        radius = float(np.hypot(gt[..., 0], gt[..., 1]).max())
        grey = np.clip(to_grey(clips.frames[clip, 0]) * 255.0, 0, 255).astype(np.uint8)
        panels = [np.repeat(grey[..., None], 3, axis=2), flow_to_colour(gt, radius)]
        write_flo(out_dir / f"{pattern}_ground_truth.flo", gt)
        for label, flow in flows.items():
            panels.append(flow_to_colour(flow[clip, 0], radius))
            write_flo(out_dir / f"{pattern}_{safe_file_name(label)}.flo", flow[clip, 0])
        gap = np.full((grey.shape[0], 1, 3), 255, dtype=np.uint8)
        picture = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
        path = out_dir / f"{pattern}.png"
        write_png(path, picture, upscale)
        written.append(path)
    return written


# -- the subcommand ------------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mwga flow-eval",
        description="EPE and 1/3/5-px accuracy of motion estimators against the benchmark's true flow.",
    )
    parser.add_argument(
        "--estimators",
        default="farneback,dis",
        help="comma-separated estimators, each NAME or NAME:FIELD=VALUE:... (e.g. dis:preset=fast)",
    )
    parser.add_argument("--clips", type=int, default=60, help="benchmark clips to evaluate (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="benchmark seed (default 0)")
    parser.add_argument(
        "--out", default="outputs/flow-eval", help="output folder (default outputs/flow-eval)"
    )
    parser.add_argument(
        "--border", type=int, default=4, help="pixels left out at each edge (default 4; 0 = full frame)"
    )
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="TARGET.FIELD=VALUE",
        help="config override: motion.FIELD (every estimator having it), NAME.FIELD, dataset.FIELD",
    )
    parser.add_argument("--device", default="cpu", help="torch device for learned estimators (default cpu)")
    parser.add_argument("--save-flow-png", metavar="DIR", help="write one colour-wheel PNG per pattern here")
    return parser


def flow_eval_command(args: list[str]) -> int:
    """``mwga flow-eval``: evaluate estimators, print the table, write JSON/CSV/markdown."""
    from mwga_core.api.progress import progress_wanted
    from mwga_core.plugin_host.host import get_host

    options = make_parser().parse_args(args)
    if options.clips < 1:
        raise MwgaUserError(f"--clips {options.clips}: expected an integer >= 1.")
    host = get_host()
    overrides = parse_set_overrides(options.assignments)
    unknown_targets = sorted(set(overrides) - {"motion", "dataset"} - set(host.registry("motion").names()))
    if unknown_targets:
        raise MwgaUserError(
            f"--set {unknown_targets[0]}.FIELD: unknown target; use motion, dataset or an estimator name "
            f"({', '.join(host.registry('motion').names())})."
        )
    specs = [s for s in options.estimators.split(",") if s.strip()]
    if not specs:
        raise MwgaUserError("--estimators is empty; name at least one, e.g. farneback.")
    estimators = build_estimators(specs, overrides, host)
    for label, estimator in estimators.items():
        if not estimator.produces_flow:
            raise MwgaUserError(f"--estimators {label}: this estimator computes no flow.")

    dataset_config = {"name": "synthetic", **overrides.get("dataset", {}), "num_clips": options.clips}
    dataset = host.build("dataset", dataset_config)
    from rich.console import Console

    console = Console(stderr=True)
    ctx = RunContext(
        seed=options.seed, device=options.device, show_progress=progress_wanted(console), console=console
    )
    corpus = dataset.load(ctx)
    clips = corpus.train
    interior_mask(*clips.frames.shape[2:4], options.border)  # fail on a bad border before any work

    scores: list[FlowScore] = []
    flows: dict[str, np.ndarray] = {}
    for label, estimator in estimators.items():
        estimator_scores, flows[label] = evaluate_estimator(
            label, estimator, clips, corpus.class_names, ctx, options.border
        )
        scores += estimator_scores

    out_dir = Path(options.out)
    settings = {
        "estimators": {label: repr(e.config) for label, e in estimators.items()},
        "clips": options.clips,
        "seed": options.seed,
        "border": options.border,
        "frame_size": list(clips.frames.shape[2:4]),
        "frame_pairs_per_clip": int(clips.frames.shape[1] - 1),
        "dataset": repr(dataset.config),
    }
    write_outputs(scores, out_dir, settings)
    region = "full frame" if options.border == 0 else f"interior, {options.border}-px border left out"
    print_table(scores, f"Flow accuracy: {options.clips} benchmark clips, seed {options.seed}, {region}")
    console.print(f"[dim]outputs: {out_dir}[/dim]")
    if options.save_flow_png:
        written = save_flow_pictures(Path(options.save_flow_png), clips, corpus.class_names, flows)
        console.print(f"[dim]{len(written)} flow pictures: {options.save_flow_png}[/dim]")
    return 0
