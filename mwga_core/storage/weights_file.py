"""A user's trained weights file (``model.checkpoint``): read it safely and name it by its content.

Two formats, told apart by the file's first bytes, not its name:

* safetensors (recommended): read lazily by :class:`~mwga_core.api.trained_model.TrainedModel`;
* a torch state dict written by ``torch.save``: read with ``torch.load(weights_only=True)``, which
  refuses pickled code, so an untrusted file cannot run anything. A ``{"state_dict": {...}}`` or
  ``{"model": {...}}`` wrapper (what training scripts commonly save) is unwrapped.

The weights' key hashes the file's bytes (blake2b), so features computed from two files with the same
content are shared, and a file changed in place gets a new key.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mwga_core.api.errors import DataError

if TYPE_CHECKING:
    import torch

#: bytes read at a time while hashing a weights file (large checkpoints are never held whole)
HASH_BLOCK = 1 << 22
#: keys of a training script's wrapper dict whose value is the state dict itself
WRAPPER_KEYS = ("state_dict", "model", "module")


def content_hash(path: Path, size: int = 16) -> str:
    """A hex blake2b hash (``size`` bytes) of the file's content, read in blocks."""
    digest = hashlib.blake2b(digest_size=size)
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` is a safetensors file: an 8-byte little-endian header length, then JSON ``{``."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0


def check_weights_path(path: str | Path, field: str = "model.checkpoint") -> Path:
    """``path`` as an existing, readable regular file, or a :class:`DataError` naming ``field``."""
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise DataError(f"{field}={path}: no such file")
    if not resolved.is_file():
        raise DataError(f"{field}={path}: not a file (give a .safetensors or a torch state-dict file)")
    return resolved


def read_weights(path: Path) -> Path | dict[str, torch.Tensor]:
    """The weights in ``path``: the path itself for safetensors (read later, lazily), else a state dict.

    Raises:
        DataError: the file is neither safetensors nor a torch file that ``weights_only`` can read, or
            holds something other than a mapping of names to tensors.
    """
    if is_safetensors(path):
        _check_safetensors(path)
        return path
    if not zipfile.is_zipfile(path):
        raise DataError(
            f"{path}: not a safetensors file or a torch state dict saved with torch.save "
            "(give a .safetensors file, or torch.save(model.state_dict(), path))"
        )
    import pickle

    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(
            f"{path}: torch.load(weights_only=True) refused it ({first_line}); save the state dict only, "
            "or convert it to safetensors"
        ) from None
    return _state_dict(loaded, path)


def _check_safetensors(path: Path) -> None:
    """Read the header of a safetensors file, so a damaged file is named now rather than mid-run."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as error:  # safetensors raises its own error types for a damaged header
        raise DataError(f"{path}: damaged safetensors file ({error})") from None


def _state_dict(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    """``loaded`` as a flat name -> tensor dict, unwrapping one :data:`WRAPPER_KEYS` level."""
    import torch

    if isinstance(loaded, Mapping):
        for key in WRAPPER_KEYS:
            inner = loaded.get(key)
            if isinstance(inner, Mapping) and all(isinstance(v, torch.Tensor) for v in inner.values()):
                loaded = inner
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise DataError(
            f"{path}: expected a non-empty state dict (name -> tensor), got {type(loaded).__name__}"
        )
    not_tensors = [str(k) for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise DataError(f"{path}: entries that are not tensors: {', '.join(not_tensors[:5])}")
    return {str(k): v for k, v in loaded.items()}
