"""Start-up time of the ``mwga`` command: what ``mwga --help``, ``mwga plugins`` and a fully cached run cost.

Prints one JSON document:

* ``help_seconds`` and ``import_hydra_seconds``: medians over ``--runs`` of ``mwga --help`` and of
  ``python -c "import hydra, omegaconf"`` (the floor any Hydra command line pays), run in turns so the
  machine's load hits both alike, and ``help_over_import_hydra``, their ratio (target <= 4);
* ``plugins_seconds``: median of ``mwga plugins`` (loads every plugin, imports none of torch);
* ``cached_run_seconds``: median wall time of the default ``mwga`` run when every stage is cached
  (target <= 2.5 s). The runs use ``--cache-dir`` (``MWGA_CACHE_DIR``; default a new temporary folder,
  filled by one untimed run first: from an empty cache that trains the default model, minutes) and
  write their outputs into a temporary folder.

Every command is the ``mwga`` console script beside this Python (``python -m mwga_core.cli.main`` when
there is none), with this Python's environment, except that compiled modules are cached in a temporary
folder as an installed copy caches them (``--as-is``: keep ``PYTHONDONTWRITEBYTECODE``, which makes
every start compile every mwga module again). Timings depend on the machine's load; the ratio less so.

Usage::

    python benches/startup.py [--runs 7] [--run-repeats 3] [--cache-dir DIR] [--skip-run] [--as-is]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def mwga_command() -> list[str]:
    """The console script installed beside this Python, else the module."""
    script = Path(sys.executable).with_name("mwga")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mwga_core.cli.main"]


def bytecode_cached(env: dict[str, str], folder: Path) -> dict[str, str]:
    """``env`` letting Python keep compiled modules in ``folder`` (``PYTHONPYCACHEPREFIX``), as an
    installed copy keeps them: without, ``PYTHONDONTWRITEBYTECODE=1`` recompiles every mwga module at
    every start, while the site-packages modules (hydra's) come precompiled."""
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return env | {"PYTHONPYCACHEPREFIX": str(folder)}


def timed(command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    """Wall seconds of one run of ``command``; a failure stops the bench with its output."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return seconds


def median(seconds: list[float]) -> float:
    return round(statistics.median(seconds), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each short command")
    parser.add_argument("--run-repeats", type=int, default=3, help="timed runs of the cached default run")
    parser.add_argument(
        "--cache-dir", default="", help="cache of the default run (default: a new temp folder)"
    )
    parser.add_argument("--skip-run", action="store_true", help="skip the cached default run")
    parser.add_argument(
        "--as-is", action="store_true", help="keep the environment's bytecode setting (see bytecode_cached)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mwga-pycache-") as pycache:
        env = dict(os.environ) if args.as_is else bytecode_cached(dict(os.environ), Path(pycache))
        report = measure(args, env)
    print(json.dumps(report, indent=2))


def measure(args: argparse.Namespace, env: dict[str, str]) -> dict:
    """The JSON document of the module docstring."""
    mwga = mwga_command()
    import_hydra = [sys.executable, "-c", "import hydra, omegaconf"]
    timed(import_hydra, env)  # the first start reads (and compiles) files; neither side pays for it
    timed([*mwga, "--help"], env)
    help_times, hydra_times = [], []
    for run in range(args.runs):
        pair = [([*mwga, "--help"], help_times), (import_hydra, hydra_times)]
        for command, times in pair[:: 1 if run % 2 == 0 else -1]:
            times.append(timed(command, env))
    plugins_times = [timed([*mwga, "plugins"], env) for _ in range(args.runs)]
    report = {
        "runs": args.runs,
        "help_seconds": median(help_times),
        "help_seconds_min_max": [round(min(help_times), 3), round(max(help_times), 3)],
        "import_hydra_seconds": median(hydra_times),
        "help_over_import_hydra": round(statistics.median(help_times) / statistics.median(hydra_times), 2),
        "target_help_over_import_hydra": 4,
        "plugins_seconds": median(plugins_times),
    }
    if not args.skip_run:
        with tempfile.TemporaryDirectory(prefix="mwga-startup-") as tmp:
            cache = Path(args.cache_dir).expanduser() if args.cache_dir else Path(tmp) / "cache"
            run_env = env | {"MWGA_CACHE_DIR": str(cache)}
            report["warmup_run_seconds"] = round(timed(mwga, env=run_env, cwd=Path(tmp)), 2)
            runs = [timed(mwga, env=run_env, cwd=Path(tmp)) for _ in range(args.run_repeats)]
            report |= {
                "cached_run_seconds": median(runs),
                "cached_run_seconds_min_max": [round(min(runs), 3), round(max(runs), 3)],
                "target_cached_run_seconds": 2.5,
                "cache_dir": str(cache) if args.cache_dir else "temporary",
            }
    report |= {
        "command": " ".join(mwga),
        "bytecode": "as is" if args.as_is else "cached (PYTHONPYCACHEPREFIX, a temporary folder)",
        "pythondontwritebytecode": bool(env.get("PYTHONDONTWRITEBYTECODE")),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    return report


if __name__ == "__main__":
    main()
