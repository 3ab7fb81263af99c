"""Sweep cost: wall time of ``mwga -m projection.dim=32,64,128,256,512`` divided by that of one ``mwga``.

Prints one JSON document. Every command runs as a subprocess in a temp folder with ``MWGA_CACHE_DIR``
pointing at a temp cache, in three cache states, each measured for the single run and for the sweep:

* ``cold``: an empty cache before the command (the model, if any, is trained by it);
* ``model_warm``: a cache holding only trained models (``models/``): every stage but training runs;
* ``warm``: the same command a second time (every stage's output cached).

``ratio`` = sweep seconds / single-run seconds in the same state; the issue's target is <= 1.5 with a
warm model cache. Five independent runs would give 5.0. ``--overrides`` adds overrides to both commands
(e.g. ``--overrides gradient=simulated`` or ``--overrides method=ours dataset.num_clips=500``).

Usage::

    python benches/sweep.py [--overrides gradient=simulated ...] [--dims 32,64,128,256,512] [--repeats 1]

Timings are wall-clock on a machine shared with other work: the JSON records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MWGA = (
    str(Path(sys.executable).with_name("mwga")) if Path(sys.executable).with_name("mwga").exists() else "mwga"
)


def run(args: list[str], folder: Path, cache: Path) -> float:
    """Seconds one ``mwga`` command takes; its output is discarded (an error stops the bench)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MWGA_")}
    env["MWGA_CACHE_DIR"] = str(cache)
    env["CI"] = "1"  # no progress bars: they cost time and nobody is watching
    start = time.perf_counter()
    done = subprocess.run([MWGA, *args], cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"`mwga {' '.join(args)}` failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def reset(cache: Path, keep_models: bool) -> None:
    """Empty the cache folder, keeping ``models/`` when asked."""
    if not cache.exists():
        return
    for child in cache.iterdir():
        if not (keep_models and child.name == "models"):
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def measure(args: list[str], folder: Path, cache: Path) -> dict[str, float]:
    """Seconds of ``args`` in the three cache states."""
    reset(cache, keep_models=False)
    cold = run(args, folder, cache)
    warm = run(args, folder, cache)
    reset(cache, keep_models=True)
    model_warm = run(args, folder, cache)
    return {"cold": cold, "model_warm": model_warm, "warm": warm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overrides", nargs="*", default=[], help="overrides added to every command")
    parser.add_argument("--dims", default="32,64,128,256,512", help="projection.dim values of the sweep")
    parser.add_argument("--repeats", type=int, default=1, help="measure this many times, report the median")
    options = parser.parse_args()
    single = list(options.overrides)
    sweep = ["-m", f"projection.dim={options.dims}", *options.overrides]
    load_before = os.getloadavg()
    samples: dict[str, list[dict[str, float]]] = {"single": [], "sweep": []}
    with tempfile.TemporaryDirectory(prefix="mwga-sweep-bench-") as tmp:
        folder, cache = Path(tmp), Path(tmp) / "cache"
        for _ in range(options.repeats):
            samples["single"].append(measure(single, folder, cache))
            samples["sweep"].append(measure(sweep, folder, cache))
        # The gradient source the runs really used (after --overrides), from a single run's results.json.
        first = sorted(folder.glob("outputs/*/*/results.json"))[0]
        gradient = json.loads(first.read_text())["config"]["gradient"]["name"]
    seconds = {
        kind: {state: round(statistics.median(s[state] for s in runs), 2) for state in runs[0]}
        for kind, runs in samples.items()
    }
    report = {
        "bench": "sweep",
        "single_command": " ".join(["mwga", *single]),
        "sweep_command": "mwga " + " ".join(sweep),
        "sweep_jobs": len(options.dims.split(",")),
        "gradient": gradient,
        "repeats": options.repeats,
        "seconds": seconds,
        "ratio": {
            state: round(seconds["sweep"][state] / seconds["single"][state], 2) for state in seconds["single"]
        },
        "target": "ratio.model_warm <= 1.5",
        "cpu_count": os.cpu_count(),
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
