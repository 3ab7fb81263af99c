"""A model folder written by ``save_pretrained``: where its denoiser, VAE, scheduler and text encoder are.

Two layouts are read (``model.path``):

* a **pipeline folder** (``pipeline.save_pretrained(path)``): ``model_index.json`` and the components'
  subfolders, ``transformer/`` or ``unet/`` (the denoiser), optional ``vae/``, ``scheduler/``,
  ``text_encoder/`` + ``tokenizer/`` (and ``text_encoder_2/`` + ``tokenizer_2/`` for HunyuanVideo);
* a **bare denoiser folder** (``denoiser.save_pretrained(path)``): its ``config.json`` and weights; the
  model then works in pixel space, with its family's objective and an all-zero text embedding.

Only JSON is read here (no weights), so a wrong folder is named before any work. Weights are
safetensors files, or ``.bin`` files read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mwga_core.api.errors import DataError

#: subfolders that may hold the denoiser of a pipeline folder, in the order they are looked for
DENOISER_FOLDERS = ("transformer", "unet")
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or a :class:`DataError` naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a component folder: its safetensors files (all shards), else its .bin files.

    Raises:
        DataError: the folder holds no weights.
    """
    for suffix in WEIGHT_SUFFIXES:
        files = sorted(p for p in folder.glob(f"*{suffix}") if p.is_file())
        if files:
            return files
    raise DataError(f"{folder}: no weights (*.safetensors or *.bin) next to its config.json")


@dataclass(frozen=True)
class ModelFolder:
    """The parts of a diffusers model folder (see the module docstring).

    Attributes:
        root: the folder given as ``model.path``.
        denoiser: the folder with the denoiser's ``config.json`` and weights.
        denoiser_config: that ``config.json`` (``_class_name`` names the architecture).
        vae: the VAE's folder, or None (pixel space).
        scheduler_config: ``scheduler/scheduler_config.json``, or None.
        pipeline_class: ``model_index.json``'s ``_class_name`` (e.g. ``WanPipeline``), or None.
        text_encoder: whether the pipeline folder has ``text_encoder/`` and ``tokenizer/``.
    """

    root: Path
    denoiser: Path
    denoiser_config: dict[str, Any]
    vae: Path | None
    scheduler_config: dict[str, Any] | None
    pipeline_class: str | None
    text_encoder: bool

    @property
    def denoiser_class(self) -> str:
        return str(self.denoiser_config.get("_class_name", ""))

    @property
    def vae_config(self) -> dict[str, Any] | None:
        return None if self.vae is None else read_json(self.vae / "config.json")

    @classmethod
    def read(cls, path: str) -> ModelFolder:
        """The folder ``path`` names, checked: a :class:`DataError` says what is missing."""
        root = Path(path).expanduser()
        field = f"model.path={path}"
        if not path:
            raise DataError("model.path is empty: give the folder your pipeline's save_pretrained wrote")
        if not root.is_dir():
            raise DataError(f"{field}: no such folder")
        if (root / "model_index.json").is_file():
            return cls._pipeline(root, field)
        if (root / "config.json").is_file():
            config = read_json(root / "config.json")
            weight_files(root)
            return cls(root, root, config, None, None, None, False)
        found = sorted(p.name for p in root.iterdir())[:8]
        raise DataError(
            f"{field}: neither a pipeline folder (model_index.json with transformer/ or unet/) nor a "
            f"denoiser folder (config.json + weights) as save_pretrained writes them; it holds {found}"
        )

    @classmethod
    def _pipeline(cls, root: Path, field: str) -> ModelFolder:
        index = read_json(root / "model_index.json")
        denoiser = next(
            (root / name for name in DENOISER_FOLDERS if (root / name / "config.json").is_file()), None
        )
        if denoiser is None:
            raise DataError(f"{field}: the pipeline folder has no transformer/ or unet/ with a config.json")
        weight_files(denoiser)
        vae = root / "vae" if (root / "vae" / "config.json").is_file() else None
        if vae is not None:
            weight_files(vae)
        scheduler_file = root / "scheduler" / "scheduler_config.json"
        scheduler = read_json(scheduler_file) if scheduler_file.is_file() else None
        has_text = (root / "text_encoder").is_dir() and (root / "tokenizer").is_dir()
        pipeline_class = index.get("_class_name")
        return cls(
            root, denoiser, read_json(denoiser / "config.json"), vae, scheduler, pipeline_class, has_text
        )
