"""The model store: trained checkpoints on disk, one entry per key of :mod:`mwga_core.storage.keys`.

The key comes from whoever made the weights (the trainer's :func:`mwga_core.diffusion.training.training_key`
hashes the training clips, seed, model config and code). Layout of one entry::

    <cache_dir>/models/<key>/step-000400.safetensors   one per saved step (never pickle)
    <cache_dir>/models/<key>/model.json                config, checkpoint steps, training log, and
                                                       every checkpoint's size and checksum ("files")

An entry counts as complete only once ``model.json`` exists, and it is written last; every file is written
atomically (:mod:`mwga_core.storage.atomic`), so an interrupted run never leaves a half-written checkpoint
that a later run would load. Writers hold the entry's lock (:meth:`ModelStore.lock`), so two runs that need
the same model train it once.

A reader checks ``model.json`` and every checkpoint it needs against the sizes and checksums listed there
(entries written before the checksums: that the safetensors file is whole). A damaged entry (garbage
``model.json``, a checkpoint missing, truncated or altered) is reported with a warning naming the file and
the reason, removed, and retrained, exactly like a damaged stage-cache entry. A store that cannot be
written (a read-only cache, a file where ``models/`` should be) is still read; a model trained there is
kept in memory after one warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from mwga_core.api.models import ModelAdapter, Weights
from mwga_core.api.trained_model import TrainedModel
from mwga_core.storage.atomic import (
    discard_folder,
    entry_lock,
    why_not_writable,
    write_bytes_atomic,
    write_json_atomic,
)
from mwga_core.storage.keys import array_digest
from mwga_core.storage.stage_cache import DamagedEntryError, file_checksum, warn_unwritable

if TYPE_CHECKING:
    import torch

#: the file that completes an entry
SIDECAR = "model.json"
log = logging.getLogger("mwga")


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}.safetensors"


class ModelStore:
    """Trained models under ``<cache_dir>/models``.

    Args:
        cache_dir: the cache folder (``cache.dir``).
        warn: where warnings go (a damaged entry, a store that cannot be written); default: the ``mwga``
            logger, so under Hydra they also land in the run's ``mwga.log``.

    Attributes:
        write_error: why the first failed write failed, or None; from then on nothing is written and
            checkpoints stay in memory.
    """

    def __init__(self, cache_dir: Path | str, warn: Callable[[str], None] | None = None) -> None:
        self.cache_dir = Path(cache_dir)
        self.root = self.cache_dir / "models"
        self.warn = warn
        self.write_error: str | None = None

    def folder(self, key: str) -> Path:
        return self.root / key

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the entry's inter-process lock (read, then train and write if missing, under it).

        In a store where the lock cannot be taken (a read-only cache) the block runs without it: a
        complete entry never changes, so reading needs none, and nothing gets written there anyway.
        """
        with ExitStack() as held:
            # without the lock: a write, if this run needs one, fails too and warns then
            with suppress(OSError):
                held.enter_context(entry_lock(self.folder(key)))
            yield

    def read(
        self,
        key: str,
        adapter: ModelAdapter,
        clip_shape: tuple[int, int, int, int],
        num_classes: int,
        steps: list[int],
    ) -> TrainedModel | None:
        """The complete entry ``key`` holding every one of ``steps``, or None.

        A damaged entry is reported (naming the file and the reason), removed, and None returned, so
        that the caller trains it again.
        """
        folder = self.folder(key)
        sidecar = folder / SIDECAR
        if not (sidecar.exists() or sidecar.is_symlink()):
            return None  # absent, or a training run that did not finish (its checkpoints get rewritten)
        try:
            info = self._check(folder, key, steps)
        except DamagedEntryError as error:
            self.warning(f"ignoring the damaged model entry {folder}: {error}; training the model again.")
            discard_folder(folder)
            return None
        checkpoints: dict[int, Weights] = {step: folder / checkpoint_name(step) for step in steps}
        return TrainedModel(adapter, clip_shape, num_classes, key, checkpoints, info, True, folder)

    @staticmethod
    def _check(folder: Path, key: str, steps: list[int]) -> dict:
        """The entry's ``model.json``, once it and the checkpoints of ``steps`` pass their checks.

        Raises:
            DamagedEntryError: what is wrong, naming the file.
        """
        sidecar = folder / SIDECAR
        try:
            info = json.loads(sidecar.read_text())
        except (OSError, ValueError) as error:  # ValueError: not JSON, not UTF-8
            raise DamagedEntryError(f"{SIDECAR} cannot be read ({error})") from None
        if not isinstance(info, dict) or info.get("key") != key:
            raise DamagedEntryError(f"{SIDECAR} is not the record of entry {key}")
        saved = info.get("checkpoint_steps")
        if not isinstance(saved, list) or not set(steps) <= set(saved):
            raise DamagedEntryError(f"{SIDECAR} lists checkpoint steps {saved!r}, expected {steps}")
        files = info.get("files")
        for step in steps:
            path = folder / checkpoint_name(step)
            if not path.is_file():
                raise DamagedEntryError(f"{path.name} is missing")
            if files is None:  # an entry from before the checksums: at least the file must be whole
                _check_safetensors(path)
                continue
            spec = files.get(path.name) if isinstance(files, dict) else None
            if not isinstance(spec, dict):
                raise DamagedEntryError(f"{SIDECAR} lists no size and checksum for {path.name}")
            size = path.stat().st_size
            if size != spec.get("bytes"):
                raise DamagedEntryError(
                    f"{path.name} has {size} bytes, {SIDECAR} says {spec.get('bytes')} (truncated?)"
                )
            if file_checksum(path) != spec.get("checksum"):
                raise DamagedEntryError(f"{path.name} does not match the checksum in {SIDECAR}")
        return info

    def save_checkpoint(self, key: str, step: int, weights: dict[str, torch.Tensor]) -> Weights:
        """Write one checkpoint of entry ``key`` as safetensors (atomically). Returns its path.

        When the store cannot be written (warned once), returns a copy of the weights instead, which
        :class:`~mwga_core.api.trained_model.TrainedModel` takes as well.
        """
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in weights.items()}
        if self.write_error is None:
            from safetensors.torch import save

            folder = self.folder(key)
            path = folder / checkpoint_name(step)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(path, save(state))
                return path
            except OSError as error:
                self.cannot_write(path, error)
        # a copy: the trainer goes on updating the tensors it handed over
        return {name: tensor.clone() for name, tensor in state.items()}

    def finish(self, key: str, info: dict) -> Path | None:
        """Complete entry ``key`` by writing its ``model.json`` (after every checkpoint), with the size
        and checksum of each checkpoint of ``info["checkpoint_steps"]``.

        Returns the entry's folder, or None when the store cannot be written (warned once).
        """
        if self.write_error is not None:
            return None
        folder = self.folder(key)
        try:
            files = {}
            for step in info["checkpoint_steps"]:
                path = folder / checkpoint_name(step)
                files[path.name] = {"bytes": path.stat().st_size, "checksum": file_checksum(path)}
            write_json_atomic(folder / SIDECAR, {**info, "files": files})
        except OSError as error:
            self.cannot_write(folder / SIDECAR, error)
            return None
        return folder

    def cannot_write(self, path: Path, error: OSError) -> None:
        """Record that writing ``path`` failed; the first time warns, naming what is at fault (unless the
        stage cache said the same in this run)."""
        if self.write_error is None:
            self.write_error = why_not_writable(path, error)
            warn_unwritable(self.cache_dir, path, error, self.warning)

    def warning(self, message: str) -> None:
        if self.warn is not None:
            self.warn(message)
        else:
            log.warning(f"warning: {message}")


def _check_safetensors(path: Path) -> None:
    """Raise DamagedEntryError unless ``path`` is a whole safetensors file (its header covers the file)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except (OSError, SafetensorError) as error:
        raise DamagedEntryError(f"{path.name} is not a whole safetensors file ({error})") from None


def model_from_module(
    adapter: ModelAdapter, module: torch.nn.Module, clip_shape: tuple[int, int, int, int], num_classes: int
) -> TrainedModel:
    """A model whose one checkpoint (step 0) is ``module``'s current weights (copied), keyed by their content.

    For a module trained or loaded outside the store (benchmarks, tests): nothing is written to disk.
    """
    state = {name: tensor.detach().cpu().clone() for name, tensor in module.state_dict().items()}
    key = "memory-" + array_digest(*(tensor.float().numpy() for tensor in state.values()), extra=list(state))
    return TrainedModel(adapter, clip_shape, num_classes, key, {0: state})
