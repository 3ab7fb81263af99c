"""The model store: trained checkpoints on disk, one entry per key of :mod:`mwga_core.storage.keys`.

The key comes from whoever made the weights (the trainer's :func:`mwga_core.diffusion.training.training_key`
hashes the training clips, seed, model config and code). Layout of one entry::

    <cache_dir>/models/<key>/step-000400.safetensors   one per saved step (never pickle)
    <cache_dir>/models/<key>/model.json                config, checkpoint steps, training log

An entry counts as complete only once ``model.json`` exists, and it is written last; every file is written
atomically (:mod:`mwga_core.storage.atomic`), so an interrupted run never leaves a half-written checkpoint
that a later run would load. Writers hold the entry's lock (:meth:`ModelStore.lock`), so two runs that need
the same model train it once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from mwga_core.api.models import ModelAdapter
from mwga_core.api.trained_model import TrainedModel
from mwga_core.storage.atomic import entry_lock, write_bytes_atomic, write_json_atomic
from mwga_core.storage.keys import array_digest

if TYPE_CHECKING:
    import torch

#: the file that completes an entry
SIDECAR = "model.json"


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}.safetensors"


class ModelStore:
    """Trained models under ``<cache_dir>/models``."""

    def __init__(self, cache_dir: Path | str) -> None:
        self.root = Path(cache_dir) / "models"

    def folder(self, key: str) -> Path:
        return self.root / key

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the entry's inter-process lock (read, then train and write if missing, under it)."""
        with entry_lock(self.folder(key)):
            yield

    def read(
        self,
        key: str,
        adapter: ModelAdapter,
        clip_shape: tuple[int, int, int, int],
        num_classes: int,
        steps: list[int],
    ) -> TrainedModel | None:
        """The complete entry ``key`` holding every one of ``steps``, or None."""
        folder = self.folder(key)
        sidecar = folder / SIDECAR
        if not sidecar.exists():
            return None
        checkpoints = {step: folder / checkpoint_name(step) for step in steps}
        if not all(path.exists() for path in checkpoints.values()):
            return None
        info = json.loads(sidecar.read_text())
        return TrainedModel(adapter, clip_shape, num_classes, key, checkpoints, info, True, folder)

    def save_checkpoint(self, key: str, step: int, weights: dict[str, torch.Tensor]) -> Path:
        """Write one checkpoint of entry ``key`` as safetensors (atomically). Returns its path."""
        from safetensors.torch import save

        folder = self.folder(key)
        folder.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in weights.items()}
        path = folder / checkpoint_name(step)
        write_bytes_atomic(path, save(state))
        return path

    def finish(self, key: str, info: dict) -> None:
        """Complete entry ``key`` by writing its ``model.json`` (after every checkpoint)."""
        write_json_atomic(self.folder(key) / SIDECAR, info)


def model_from_module(
    adapter: ModelAdapter, module: torch.nn.Module, clip_shape: tuple[int, int, int, int], num_classes: int
) -> TrainedModel:
    """A model whose one checkpoint (step 0) is ``module``'s current weights (copied), keyed by their content.

    For a module trained or loaded outside the store (benchmarks, tests): nothing is written to disk.
    """
    state = {name: tensor.detach().cpu().clone() for name, tensor in module.state_dict().items()}
    key = "memory-" + array_digest(*(tensor.float().numpy() for tensor in state.values()), extra=list(state))
    return TrainedModel(adapter, clip_shape, num_classes, key, {0: state})
