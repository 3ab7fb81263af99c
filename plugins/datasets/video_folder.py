"""Clips from folders on disk: video files, image-sequence folders and ``.npy`` arrays.

A *clip* found under a folder (searched recursively, sorted by path, hidden entries ignored) is one of:

* a video file ``.mp4 .webm .avi .mkv .mov .m4v`` (decoded with PyAV, ``pip install av``);
* a ``.npy`` array of shape (T, H, W) or (T, H, W, C), C in 1, 3 or 4 (alpha dropped), uint8 (0..255)
  or float (values in [0, 1]);
* a folder holding ``.png .jpg .jpeg .bmp`` frames (read with OpenCV, ordered by a natural sort of their
  names, so ``f2.png`` comes before ``f10.png``); such a folder is one clip and is not searched further.

The clip id is the path relative to the searched folder (``pans/clip_0001.mp4``, ``seq07`` for an image
folder). Every clip becomes the same shape, whatever its length, resolution and colour:

1. **Frame sampling** (clip-length normalisation): ``num_frames`` frames at indices
   ``round(linspace(0, L - 1, num_frames))`` of the clip's L frames, i.e. uniformly over the whole clip;
   a clip shorter than ``num_frames`` repeats frames (nearest-frame resampling). A clip needs L >= 2.
2. **Colour**: RGB; ``grayscale=true`` converts with OpenCV's BT.601 weights (C = 1).
3. **Size**: scaled (area interpolation when shrinking, linear when enlarging) so that it covers
   ``size`` (``[S]`` means S x S, ``[H, W]`` an explicit size), then centre-cropped; the aspect ratio is
   kept.

A corrupt, empty or unreadable clip, a dangling or looping symbolic link and a file name that is not valid
UTF-8 (:mod:`mwga_plugins.datasets.clip_files`) raise :class:`~mwga_core.api.errors.DataError` naming the
file and the reason (``on_error=raise``), or are left out and listed in ``Corpus.skipped``
(``on_error=skip``).

Labels (optional, for evaluating on labelled folders): ``labels=folders`` takes each clip's first path
component as its class (``pans/clip_0001.mp4`` -> ``pans``); a CSV path reads a UTF-8 file with the columns
``clip,label``, ``clip`` being the clip id (training clips: relative to ``train_dir``; query clips:
relative to ``query_dir``, or the path as given in ``query_files``). Clips without a label get -1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mwga_plugins.datasets.clip_files import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    clip_file,
    image_files,
    read_label_csv,
    scan_folder,
)

from mwga_core import hookimpl
from mwga_core.api.clips import ClipSet, Corpus
from mwga_core.api.context import RunContext
from mwga_core.api.datasets import ClipFile, ClipReader, DatasetConfig, path_text
from mwga_core.api.errors import ConfigValueError, DataError
from mwga_core.config.checks import at_least, one_of, satisfies

ON_ERROR = ("raise", "skip")


@dataclass
class VideoFolderConfig(DatasetConfig):
    """Where the clips are and the one shape every clip is brought to (see the module docstring)."""

    #: folder of training clips, searched recursively
    train_dir: str = ""
    #: folder of query clips (or use query_files)
    query_dir: str = ""
    #: query clip files or image folders, instead of / besides query_dir
    query_files: list[str] = field(default_factory=list)
    #: "" (no labels), "folders" (first path component) or a CSV file with columns clip,label
    labels: str = ""
    num_frames: int = field(default=16, metadata=at_least(2))
    #: [S] for S x S, or [H, W]; cover then centre-crop, aspect kept
    size: list[int] = field(
        default_factory=lambda: [32],
        metadata=satisfies(
            lambda size: len(size) in (1, 2) and min(size) >= 8, "[S] or [H, W] with sides >= 8 (pixels)"
        ),
    )
    grayscale: bool = True
    #: raise: a bad clip stops the run; skip: it is left out and listed
    on_error: str = field(default="raise", metadata=one_of(*ON_ERROR))


def sample_indices(length: int, num_frames: int) -> np.ndarray:
    """(num_frames,) int64 frame indices spread uniformly over a clip of ``length`` frames."""
    return np.rint(np.linspace(0, length - 1, num_frames)).astype(np.int64)


class VideoFolderDataset(ClipReader):
    """Training and query clips read from folders (see the module docstring)."""

    def __init__(self, config: VideoFolderConfig) -> None:
        super().__init__(config)
        size = config.size
        self.height, self.width = (size[0], size[0]) if len(size) == 1 else tuple(size)

    def scan(self, folder: Path) -> list[ClipFile]:
        """Every clip under ``folder``; with ``on_error=raise`` an entry that can never be read (a dangling
        link, a name that is not UTF-8) stops here, before any clip is read."""
        clips = scan_folder(folder)
        if self.config.on_error == "raise" and (bad := next((c for c in clips if c.problem), None)):
            raise DataError(bad.problem)
        return clips

    def clip_at(self, path: Path, clip_id: str) -> ClipFile | None:
        return clip_file(path, clip_id)

    @property
    def channels(self) -> int:
        return 1 if self.config.grayscale else 3

    # -- reading one clip ------------------------------------------------------------------------------

    def read_clip(self, clip: ClipFile) -> np.ndarray:
        """Read, sample, convert and resize one clip. Shape: returns (T, H, W, C) float32 in [0, 1].

        Raises DataError naming the file and the reason when it cannot be used.
        """
        if clip.problem:
            raise DataError(clip.problem)
        shown = path_text(clip.path)
        try:
            if clip.kind == "video":
                frames = self._read_video(clip.path)
            elif clip.kind == "npy":
                frames = self._read_npy(clip.path)
            else:
                frames = self._read_images(clip.path)
        except DataError:
            raise
        except PermissionError as error:
            raise DataError(f"{shown}: cannot be read ({error.strerror or error}).") from None
        except Exception as error:  # decoders raise many kinds; all mean "this file is unusable"
            # FFmpeg's errors carry the file name again in str(error): its strerror says it once
            reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
            raise DataError(f"{shown}: cannot be decoded ({type(error).__name__}: {reason}).") from None
        return frames

    def _finish(self, frames: list[np.ndarray]) -> np.ndarray:
        """Frames (h, w, 3) uint8 RGB or float [0, 1] -> (T, H, W, C) float32 at the configured size."""
        import cv2

        out = np.empty((len(frames), self.height, self.width, self.channels), dtype=np.float32)
        for index, frame in enumerate(frames):
            image = frame.astype(np.float32) / 255.0 if frame.dtype == np.uint8 else frame.astype(np.float32)
            if self.config.grayscale:
                image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
            out[index] = self._cover_crop(image).reshape(self.height, self.width, self.channels)
        np.clip(out, 0.0, 1.0, out=out)
        return out

    def _cover_crop(self, image: np.ndarray) -> np.ndarray:
        import cv2

        h, w = image.shape[:2]
        scale = max(self.height / h, self.width / w)
        new_h, new_w = max(self.height, round(h * scale)), max(self.width, round(w * scale))
        if (new_h, new_w) != (h, w):
            interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
        top, left = (new_h - self.height) // 2, (new_w - self.width) // 2
        return image[top : top + self.height, left : left + self.width]

    def _check_length(self, path: Path, length: int) -> None:
        if length == 0:
            raise DataError(f"{path}: empty clip: no frames could be read.")
        if length < 2:
            raise DataError(f"{path}: the clip has 1 frame; motion needs at least 2.")

    def _read_video(self, path: Path) -> np.ndarray:
        import av

        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (0 bytes).")
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path}: the file holds no video stream.")
            hint = int(container.streams.video[0].frames or 0)
        # The container's frame count is a hint; when it is wrong, a second pass uses the decoded count.
        for length in ([hint] if hint >= 2 else []) + [None]:
            if length is None:
                length = self._count_video_frames(path)
                self._check_length(path, length)
            wanted = sample_indices(length, self.config.num_frames)
            picked, decoded = self._decode_video(path, set(wanted.tolist()))
            if decoded == length:
                return self._finish([picked[i] for i in wanted])
        raise DataError(f"{path}: the number of decoded frames changes between reads.")

    @staticmethod
    def _count_video_frames(path: Path) -> int:
        import av

        with av.open(str(path)) as container:
            return sum(1 for _ in container.decode(video=0))

    @staticmethod
    def _decode_video(path: Path, wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
        import av

        picked: dict[int, np.ndarray] = {}
        count = 0
        with av.open(str(path)) as container:
            for count, frame in enumerate(container.decode(video=0), start=1):
                if count - 1 in wanted:
                    picked[count - 1] = frame.to_ndarray(format="rgb24")
        return picked, count

    def _read_npy(self, path: Path) -> np.ndarray:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (0 bytes).")
        with open(path, "rb") as handle:
            magic = handle.read(6)
        if magic != b"\x93NUMPY":  # numpy would blame pickles for any file that is not a .npy array
            raise DataError(f"{path}: cannot be decoded (not a .npy array: no NumPy header).")
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if array.ndim == 3:
            array = array[..., None]
        if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
            raise DataError(
                f"{path}: array of shape {array.shape}; expected (T, H, W) or (T, H, W, C) with C in 1, 3, 4."
            )
        if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
            raise DataError(f"{path}: array of dtype {array.dtype}; expected uint8 (0..255) or float [0, 1].")
        self._check_length(path, array.shape[0])
        frames = np.asarray(array[sample_indices(array.shape[0], self.config.num_frames)])
        if frames.dtype != np.uint8:
            if not np.isfinite(frames).all() or frames.min() < 0.0 or frames.max() > 1.0:
                raise DataError(f"{path}: float frames must be finite values in [0, 1].")
            frames = frames.astype(np.float32)
        frames = frames[..., :3]
        if frames.shape[-1] == 1:
            frames = np.repeat(frames, 3, axis=-1)
        return self._finish(list(frames))

    def _read_images(self, folder: Path) -> np.ndarray:
        import cv2

        files = image_files(folder)
        self._check_length(folder, len(files))
        frames = []
        for index in sample_indices(len(files), self.config.num_frames):
            image = cv2.imread(str(files[index]), cv2.IMREAD_COLOR)
            if image is None:
                raise DataError(f"{files[index]}: the image cannot be read (corrupt, empty or not an image).")
            frames.append(image[..., ::-1])  # OpenCV reads BGR
        return self._finish(frames)

    # -- many clips --------------------------------------------------------------------------------------

    def read_clips(self, clips: list[ClipFile]) -> tuple[np.ndarray, list[ClipFile], list[dict[str, str]]]:
        """Read several clips, applying ``on_error``.

        Returns:
            frames: (n, T, H, W, C) float32 of the clips read.
            kept: the n clips read, in input order.
            skipped: ``{"file": path_text(path), "reason": message}`` for each clip left out
                (``on_error=skip``).
        """
        frames, kept, skipped = [], [], []
        for clip in clips:
            try:
                frames.append(self.read_clip(clip))
                kept.append(clip)
            except DataError as error:
                if self.config.on_error == "raise":
                    raise
                skipped.append({"file": path_text(clip.path), "reason": str(error)})
        shape = (0, self.config.num_frames, self.height, self.width, self.channels)
        stacked = np.stack(frames) if frames else np.zeros(shape, dtype=np.float32)
        return stacked, kept, skipped

    def query_clips(self) -> list[ClipFile]:
        """The query clips of ``query_dir`` and ``query_files`` (ids: relative path / path as given)."""
        clips = scan_folder(self.config.query_dir) if self.config.query_dir else []
        for name in self.config.query_files:
            path = Path(name).expanduser()
            if not (path.exists() or path.is_symlink()):  # a broken link is found, then refused by its reader
                raise DataError(f"{path_text(path)}: query file not found.")
            clip = clip_file(path, str(name))
            if clip is None:
                raise DataError(
                    f"{path_text(path)}: not a clip; expected a video ({', '.join(VIDEO_SUFFIXES)}), a .npy array or "
                    f"a folder of {', '.join(IMAGE_SUFFIXES)} frames."
                )
            clips.append(clip)
        return clips

    def label_names(self, clips: list[ClipFile], split: str) -> list[str | None]:
        """Each clip's class name from ``labels``, None where unknown."""
        source = self.config.labels
        if not source:
            return [None] * len(clips)
        if source == "folders":
            return [c.id.split("/")[0] if "/" in c.id else None for c in clips]
        table = read_label_csv(Path(source).expanduser())
        return [table.get(c.id) for c in clips]

    def cache_fingerprint(self) -> object:
        """Id, size and modification time of every clip (and of a labels CSV): any edit reloads."""
        files = scan_folder(self.config.train_dir) if self.config.train_dir else []
        files += self.query_clips() if (self.config.query_dir or self.config.query_files) else []
        labels = Path(self.config.labels).expanduser() if self.config.labels not in ("", "folders") else None
        label_stat = (
            [labels.stat().st_size, labels.stat().st_mtime_ns] if labels and labels.exists() else None
        )
        return {"clips": [clip.key() for clip in files], "labels": label_stat}

    def load(self, ctx: RunContext) -> Corpus:
        if not self.config.train_dir:
            raise ConfigValueError("train_dir", self.config.train_dir, "a folder of training clips")
        if not (self.config.query_dir or self.config.query_files):
            raise ConfigValueError(
                "query_dir", self.config.query_dir, "a folder of query clips (or query_files)"
            )
        splits = {}
        skipped: list[dict[str, str]] = []
        for split, files in (("train", scan_folder(self.config.train_dir)), ("query", self.query_clips())):
            frames, kept, left_out = self.read_clips(files)
            skipped += left_out
            splits[split] = (frames, kept, self.label_names(kept, split))
        class_names = sorted({name for _, _, names in splits.values() for name in names if name is not None})
        sets = {
            split: ClipSet(
                frames=frames,
                labels=np.array(
                    [class_names.index(n) if n is not None else -1 for n in names], dtype=np.int64
                ),
                ids=[c.id for c in kept],
            )
            for split, (frames, kept, names) in splits.items()
        }
        return Corpus(train=sets["train"], queries=sets["query"], class_names=class_names, skipped=skipped)


@hookimpl
def mwga_register_datasets(register):
    register(
        "video_folder",
        VideoFolderDataset,
        VideoFolderConfig,
        description="clips from folders of videos (PyAV), image sequences and .npy arrays",
    )
