"""The data that flows between stages: clips, corpora and clips with their motion analysis.

Shapes use N clips, T frames, H x W pixels, C channels (1 grey or 3 RGB), B descriptor dims.
Frames are float32 in [0, 1]; flow is float32 pixels with ``flow[..., y, x, :] = (dx, dy)`` meaning the
pixel at (x, y) of frame t moves to (x + dx, y + dy) in frame t + 1 (OpenCV's convention).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mwga_core.api.errors import DataError


@dataclass
class ClipSet:
    """Clips of one split (training corpus or queries).

    Attributes:
        frames: (N, T, H, W, C) float32 in [0, 1].
        labels: (N,) int64 index into the corpus' ``class_names``; -1 where unknown.
        ids: N unique clip identifiers, used in rankings and for per-clip seeds.
        gt_flow: optional (N, T-1, H, W, 2) float32 exact flow, for flow evaluation.
    """

    frames: np.ndarray
    labels: np.ndarray
    ids: list[str]
    gt_flow: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[1])

    def subset(self, indices: np.ndarray | list[int]) -> ClipSet:
        """The clips at ``indices``, in that order (labels, ids and gt_flow follow)."""
        indices = np.asarray(indices, dtype=np.int64)
        return ClipSet(
            frames=self.frames[indices],
            labels=self.labels[indices],
            ids=[self.ids[i] for i in indices],
            gt_flow=None if self.gt_flow is None else self.gt_flow[indices],
        )

    def validate(self, split: str) -> None:
        """Raise :class:`DataError` naming the split and clip when the clips cannot be used."""
        if len(self.ids) == 0:
            raise DataError(f"the {split} split is empty: a corpus needs at least one clip.")
        if self.frames.ndim != 5:
            raise DataError(f"{split} frames have shape {self.frames.shape}; expected (N, T, H, W, C).")
        n, t, _, _, c = self.frames.shape
        if n != len(self.ids) or self.labels.shape != (n,):
            raise DataError(
                f"{split}: {n} clips of frames but {len(self.ids)} ids and {self.labels.shape[0]} labels."
            )
        if len(set(self.ids)) != n:
            raise DataError(f"{split}: clip ids are not unique.")
        if t < 2:
            raise DataError(f"{split} clips have {t} frame(s); motion needs at least 2.")
        if c not in (1, 3):
            raise DataError(f"{split} frames have {c} channels; expected 1 (grey) or 3 (RGB).")
        finite = np.isfinite(self.frames).reshape(n, t, -1).all(axis=2)
        if not finite.all():
            clip, frame = np.argwhere(~finite)[0]
            raise DataError(
                f"{split} clip {self.ids[clip]!r} has NaN or infinite values in frame {frame}; "
                f"frames must be finite values in [0, 1]."
            )


@dataclass
class Corpus:
    """A training corpus with its queries; ``class_names[label]`` names a motion pattern.

    ``skipped`` lists the files a dataset left out (``{"file": ..., "reason": ...}``, e.g.
    ``dataset=video_folder`` with ``on_error=skip``), so the run's outputs can name them.
    """

    train: ClipSet
    queries: ClipSet
    class_names: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)

    def validate(self) -> None:
        self.train.validate("training")
        self.queries.validate("query")
        if self.train.frames.shape[1:] != self.queries.frames.shape[1:]:
            raise DataError(
                f"query clips have shape {self.queries.frames.shape[1:]} but training clips "
                f"{self.train.frames.shape[1:]}; both must match."
            )


@dataclass
class AnalysedClips:
    """Clips together with what the motion and descriptor stages computed for them.

    Attributes:
        clips: the clips themselves.
        flows: (N, T-1, H, W, 2) float32, or None when the method uses no motion estimator.
        descriptors: (N, B) float32, or None when the method uses no descriptor.
        static: (N,) bool, True for clips whose flow is (near) zero everywhere.
    """

    clips: ClipSet
    flows: np.ndarray | None = None
    descriptors: np.ndarray | None = None
    static: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __len__(self) -> int:
        return len(self.clips)

    def subset(self, indices: np.ndarray | list[int]) -> AnalysedClips:
        """The clips at ``indices`` with their flows, descriptors and static flags, in that order.

        Position j of the subset is clip ``indices[j]`` of this set; gradient sources that derive
        per-clip randomness from clip ids (not positions) give the same gradients either way.
        """
        indices = np.asarray(indices, dtype=np.int64)
        return AnalysedClips(
            clips=self.clips.subset(indices),
            flows=None if self.flows is None else self.flows[indices],
            descriptors=None if self.descriptors is None else self.descriptors[indices],
            static=self.static[indices] if len(self.static) == len(self) else self.static,
        )
