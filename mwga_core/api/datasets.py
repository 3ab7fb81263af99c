"""Datasets: where training clips and query clips come from.

Built-in implementations (``plugins/datasets``):
    synthetic: the paper's benchmark of six planted motion patterns.
    video_folder: clips read from folders of video files, image sequences and ``.npy`` arrays; a
        :class:`ClipReader`.

:class:`ClipReader` is the contract ``mwga index`` and ``mwga attribute`` need: a dataset that finds clip
files in a folder and reads them one batch at a time, so a corpus never has to fit in memory. Any
dataset implementing it can be indexed; the commands refuse other datasets by name.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mwga_core.api.clips import Corpus
from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.config.checks import check_fields
from mwga_core.plugin_host.registry import ComponentConfig


@dataclass
class DatasetConfig(ComponentConfig):
    """Base config for datasets."""


class Dataset(ABC):
    """Produces a :class:`Corpus` (training clips, query clips, class names)."""

    def __init__(self, config: DatasetConfig) -> None:
        check_fields(config)
        self.config = config

    @abstractmethod
    def load(self, ctx: RunContext) -> Corpus:
        """Return the corpus; the same config and ``ctx.seed`` must give identical clips."""

    def cache_fingerprint(self) -> object | None:
        """What the corpus depends on besides config, seed and code (e.g. the size and time of every file
        read), as JSON-able data; the stage cache keeps the loaded corpus under a key of it. None (the
        default): the corpus is loaded every run and later stages are keyed by its content."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


@dataclass(frozen=True)
class ClipFile:
    """One clip on disk; ``size`` and ``mtime_ns`` identify its version (an index reuses a row only for
    the same id, size and time).

    Attributes:
        id: the clip's name in rankings: its path relative to the scanned folder, or as given.
        path: where it is.
        kind: what the reader makes of it (``video``, ``npy``, ``images`` for video_folder).
        size: bytes (summed over the files of a clip made of several).
        mtime_ns: modification time (the newest of its files).
        problem: why the entry cannot be read, found when it was scanned (a dangling or looping
            symbolic link, a name that is not UTF-8), as a message naming it; "" for a usable entry.
            :meth:`ClipReader.read_clip` raises it, so the dataset's policy for bad clips applies to it.
    """

    id: str
    path: Path
    kind: str
    size: int
    mtime_ns: int
    problem: str = ""

    def key(self) -> list:
        """What identifies this version of the clip in an index."""
        return [self.id, self.size, self.mtime_ns]


def path_text(path: str | Path) -> str:
    """``path`` as text for messages, ids and JSON: bytes of a name that is not UTF-8 (which Python keeps
    as lone surrogates, unwritable as UTF-8) are shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8_text(text: str) -> bool:
    """Whether ``text`` (e.g. a file name as Python decodes it) can be written as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class ClipReader(Dataset):
    """A dataset that reads clip files: what ``mwga index`` and ``mwga attribute`` need.

    The index scans a corpus folder with :meth:`scan`, reads it batch by batch with :meth:`read_clips`
    and labels it with :meth:`label_names`; ``mwga attribute`` turns each query path into a clip with
    :meth:`clip_at`. Its config's ``train_dir`` is set to the indexed folder and its ``labels`` field
    (when it has one) is kept from one index run to the next.
    """

    @abstractmethod
    def scan(self, folder: Path) -> list[ClipFile]:
        """Every clip under ``folder``, sorted by id; DataError when the folder does not exist. An entry
        that looks like a clip but cannot be one is returned with its ``problem`` (or raised at once)."""

    @abstractmethod
    def clip_at(self, path: Path, clip_id: str) -> ClipFile | None:
        """The clip at ``path`` with the id ``clip_id``, or None when ``path`` holds no clip."""

    @abstractmethod
    def read_clip(self, clip: ClipFile) -> np.ndarray:
        """One clip's frames. Shape: returns (T, H, W, C) float32 in [0, 1]. DataError when unusable."""

    @abstractmethod
    def read_clips(self, clips: list[ClipFile]) -> tuple[np.ndarray, list[ClipFile], list[dict[str, str]]]:
        """Several clips, applying the dataset's policy for bad ones.

        Returns:
            frames: (n, T, H, W, C) float32 of the clips read.
            kept: the n clips read, in input order.
            skipped: ``{"file": path_text(path), "reason": message}`` for each clip left out.
        """

    @abstractmethod
    def label_names(self, clips: list[ClipFile], split: str) -> list[str | None]:
        """Each clip's class name (``split``: ``train`` or ``query``), None where unknown."""


def require_clip_reader(dataset: Dataset) -> ClipReader:
    """``dataset`` when it reads clip files; otherwise a ConfigValueError naming it."""
    if not isinstance(dataset, ClipReader):
        raise ConfigValueError(
            "dataset",
            dataset.config.name,
            "a dataset that reads clip files (one implementing mwga_core.api.datasets.ClipReader, "
            "e.g. dataset=video_folder)",
        )
    return dataset
