"""What every stage may need besides its own config: seeds, device, folders, progress."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from mwga_core.api.progress import make_progress

log = logging.getLogger("mwga")


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed derived from ``seed`` and ``parts``, stable across processes and machines."""
    text = repr((int(seed),) + tuple(str(p) for p in parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


@dataclass
class RunContext:
    """Run-wide settings handed to every stage.

    Attributes:
        seed: the run's seed; stages derive their own with :meth:`seed_for`.
        device: torch device string (``cpu``, ``cuda``, ``cuda:1``).
        cache_dir: where reusable artefacts (trained models, features) live.
        output_dir: this run's output folder.
        show_progress: draw live progress bars (an interactive terminal); when False, long stages print
            a progress line every ``MWGA_PROGRESS_INTERVAL`` seconds instead (CI, pipes, log files).
    """

    seed: int = 0
    device: str = "cpu"
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "mwga")
    output_dir: Path = field(default_factory=Path.cwd)
    show_progress: bool = False
    console: Console = field(default_factory=lambda: Console(stderr=True))
    stage_log: list[dict] = field(default_factory=list)

    def seed_for(self, *parts: object) -> int:
        """A seed for one purpose (e.g. ``("projection", 128)``), independent of call order."""
        return derive_seed(self.seed, *parts)

    def rng(self, *parts: object) -> np.random.Generator:
        """A numpy generator seeded by :meth:`seed_for`."""
        return np.random.default_rng(self.seed_for(*parts))

    def progress(self, description: str, total: int | None):
        """A progress context; ``advance(n)`` on the returned handle reports n more steps done
        (``total=None``: work that cannot count its steps, shown with its elapsed time). Bars or periodic
        lines, see :mod:`mwga_core.api.progress`."""
        return make_progress(description, total, enabled=self.show_progress, console=self.console)

    @contextmanager
    def stage(self, name: str) -> Iterator[dict]:
        """Time a stage and log one line about it; the yielded dict can carry a ``status``."""
        info: dict = {"stage": name, "status": "computed"}
        start = time.perf_counter()
        yield info
        info["seconds"] = round(time.perf_counter() - start, 3)
        self.stage_log.append(info)
        # Under Hydra this reaches stderr and the job's log file (conf/config.yaml sets the handlers).
        log.info(f"{name}: {info['status']} in {info['seconds']:.2f} s")
