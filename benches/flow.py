"""Motion-estimator speed: frame pairs per second, and the overhead of mwga's Farnebäck wrapper.

Prints one JSON document:

* ``pairs_per_second[size][estimator]``: frame pairs per second of ``estimator.estimate`` on benchmark
  clips of ``size`` x ``size`` grey frames (best of ``--repeats`` runs);
* ``farneback_overhead[size]``: seconds of ``FarnebackFlow.estimate`` on an (N, T, H, W, 1) float batch
  over a bare ``cv2.calcOpticalFlowFarneback`` loop on the same frames already in uint8 (best of
  ``--repeats`` each, interleaved), and whether both gave identical numbers. The target is a ratio <= 1.2.

Usage::

    python benches/flow.py [--repeats 5] [--raft-checkpoint raft-small.pth] [--device cpu]

Timings depend on the machine's load; run it twice and compare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from mwga_core.api.context import RunContext
from mwga_core.api.motion import to_grey
from mwga_core.plugin_host.host import get_host

#: clips per size: 300 frame pairs at 32x32, 30 at 256x256
CLIPS_PER_SIZE = {32: 20, 256: 2}
FRAMES = 16


def benchmark_frames(size: int, clips: int, seed: int = 0) -> np.ndarray:
    """Benchmark clips (one per pattern, cycling) of ``size`` x ``size``. Shape: (clips, 16, size, size, 1)."""
    from mwga_plugins.datasets.synthetic import PATTERNS, SyntheticConfig, render_clip

    config = SyntheticConfig(num_frames=FRAMES, size=size)
    ctx = RunContext(seed=seed)
    frames = np.empty((clips, FRAMES, size, size, 1), dtype=np.float32)
    for i in range(clips):
        frames[i, ..., 0], _ = render_clip(PATTERNS[i % len(PATTERNS)], ctx.rng("bench", size, i), config)
    return frames


def best_seconds(function, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def estimator_configs(raft_checkpoint: str | None) -> dict[str, dict]:
    import cv2

    configs = {
        "farneback": {"name": "farneback"},
        "dis_ultrafast": {"name": "dis", "preset": "ultrafast"},
        "dis_fast": {"name": "dis", "preset": "fast"},
        "dis_medium": {"name": "dis", "preset": "medium"},
    }
    if hasattr(cv2, "optflow"):
        configs["tvl1"] = {"name": "tvl1"}
    if raft_checkpoint:
        configs["raft"] = {"name": "raft", "checkpoint": raft_checkpoint}
    return configs


def farneback_overhead(frames: np.ndarray, repeats: int) -> dict:
    """Time FarnebackFlow.estimate against a bare OpenCV loop on the same uint8 frames."""
    import cv2
    from mwga_plugins.motion.farneback import FarnebackConfig, FarnebackFlow

    config = FarnebackConfig(name="farneback")
    estimator = FarnebackFlow(config)
    ctx = RunContext()
    grey = np.clip(np.rint(to_grey(frames) * 255.0), 0, 255).astype(np.uint8)
    n, t = grey.shape[:2]

    def bare_loop() -> list[np.ndarray]:
        return [
            cv2.calcOpticalFlowFarneback(
                grey[i, j],
                grey[i, j + 1],
                None,
                config.pyr_scale,
                config.levels,
                config.winsize,
                config.iterations,
                config.poly_n,
                config.poly_sigma,
                0,
            )
            for i in range(n)
            for j in range(t - 1)
        ]

    # Interleaved, so a burst of load from other processes hits both sides alike.
    bare, wrapped = float("inf"), float("inf")
    for _ in range(repeats):
        bare = min(bare, best_seconds(bare_loop, 1))
        wrapped = min(wrapped, best_seconds(lambda: estimator.estimate(frames, ctx), 1))
    identical = bool(
        np.array_equal(np.stack(bare_loop()), estimator.estimate(frames, ctx).reshape(-1, *grey.shape[2:], 2))
    )
    return {
        "frame_pairs": n * (t - 1),
        "bare_opencv_seconds": round(bare, 5),
        "estimator_seconds": round(wrapped, 5),
        "ratio": round(wrapped / bare, 3),
        "identical_flow": identical,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--raft-checkpoint", default=None, help="also time RAFT with this checkpoint")
    parser.add_argument("--device", default="cpu", help="torch device for RAFT")
    options = parser.parse_args()

    import cv2
    import torch

    host = get_host()
    report: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "opencv": cv2.__version__,
            "opencv_threads": cv2.getNumThreads(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "note": "shared machine: timings are noisy",
        },
        "pairs_per_second": {},
        "farneback_overhead": {},
    }
    for size, clips in CLIPS_PER_SIZE.items():
        frames = benchmark_frames(size, clips)
        rates = {}
        for label, config in estimator_configs(options.raft_checkpoint).items():
            estimator = host.build("motion", config)
            ctx = RunContext(device=options.device)
            # RAFT on a CPU takes a large fraction of a second per pair: time it on one clip, once.
            timed = frames[:1] if label == "raft" else frames
            repeats = 1 if label == "raft" else options.repeats
            estimator.estimate(frames[:1, :2], ctx)  # warm-up (lazy imports, model loading)
            seconds = best_seconds(lambda e=estimator, c=ctx, f=timed: e.estimate(f, c), repeats)
            rates[label] = round(len(timed) * (FRAMES - 1) / seconds, 1)
        report["pairs_per_second"][f"{size}x{size}"] = rates
        report["farneback_overhead"][f"{size}x{size}"] = farneback_overhead(frames, options.repeats)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
