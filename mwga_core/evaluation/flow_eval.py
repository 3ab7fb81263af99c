"""Flow accuracy against a dataset's exact ground truth (``mwga flow-eval``, :mod:`mwga_core.cli.flow_eval`).

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


# -- estimator specs ---------------------------------------------------------------------------------


def estimator_overrides(spec: str) -> tuple[str, list[str]]:
    """``dis:preset=fast:finest_scale=0`` -> (``dis``, [``motion=dis``, ``motion.preset=fast``, ...]).

    The overrides choose the estimator and set its fields the way ``mwga motion=dis motion.preset=fast``
    does, so they are checked like any other override.
    """
    name, *assignments = spec.strip().split(":")
    overrides = [f"motion={name.strip()}"]
    for assignment in assignments:
        if "=" not in assignment:
            raise MwgaUserError(f"--estimators entry {spec!r}: {assignment!r} is not FIELD=VALUE.")
        key, value = assignment.split("=", 1)
        overrides.append(f"motion.{key.strip()}={value.strip()}")
    return name.strip(), overrides


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
