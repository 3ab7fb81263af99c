"""Text conditioning of a diffusers denoiser: per-clip captions, precomputed embeddings, or one prompt.

Three sources, by config field:

* ``model.captions``: a UTF-8 CSV ``clip,caption`` (clip ids as ``dataset.labels`` names them: paths
  relative to the indexed folder). The captions are encoded by the pipeline's own text encoder(s)
  (``encode_prompt`` of the pipeline class in ``model_index.json``), so the folder must hold
  ``text_encoder/`` and ``tokenizer/``.
* ``model.embeddings``: a safetensors file of precomputed prompt embeddings keyed by clip id: ``<id>``
  (L, D), and for families that take them ``<id>#mask`` (L,) and ``<id>#pooled`` (D,). The entry ``""``
  (the same three keys with an empty id), when present, is the default of clips without an entry.
* neither: every clip gets ``model.prompt`` (default ``""``, the empty prompt: attribution then asks what
  the model learned regardless of prompt). Without a text encoder the empty prompt is stood in for by an
  all-zero embedding of the family's length (mask all ones).

Clips without a caption or embedding get ``model.prompt`` (``mwga attribute --caption`` sets it for the
queries). A captions / embeddings file that names some clips of a set must name no clip outside it: a
typo in a clip id is an error, not a silently empty prompt. A file that names none of a set's clips (the
queries of ``mwga attribute``) gets a warning.
"""

from __future__ import annotations

import csv
import io
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mwga_plugins.models.diffusers.families import HIDDEN, MASK, POOLED, Family
from mwga_plugins.models.diffusers.folder import ModelFolder, read_json

from mwga_core.api.errors import ConfigValueError, DataError

if TYPE_CHECKING:
    import torch

#: prompts encoded at a time
PROMPT_BATCH = 16
#: clip ids an error message lists at most
SHOWN = 5


def read_captions(path: Path) -> dict[str, str]:
    """``clip -> caption`` from a UTF-8 CSV with the header ``clip,caption``; DataError naming the file."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except OSError as error:
        raise DataError(f"model.captions={path}: cannot be read ({error.strerror or error})") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"model.captions={path}: not a UTF-8 CSV file ({error})") from None
    if not rows or not {"clip", "caption"} <= set(rows[0]):
        found = list(rows[0]) if rows else "no rows"
        raise DataError(f"model.captions={path}: expected a CSV with the header clip,caption; found {found}")
    return {row["clip"]: row["caption"] or "" for row in rows}


def _check_names(named: set[str], ids: list[str], source: str) -> None:
    """A file naming some of ``ids`` must name no other clip; naming none of them gets a warning."""
    known = set(ids)
    if not named & known:
        if named:
            warnings.warn(
                f"{source} names none of these {len(ids)} clips (e.g. {ids[0]!r}): they get model.prompt",
                stacklevel=3,
            )
        return
    unknown = sorted(named - known)
    if unknown:
        raise DataError(
            f"{source} names {len(unknown)} clip(s) that are not among the {len(ids)} clips: "
            f"{', '.join(unknown[:SHOWN])}{' ...' if len(unknown) > SHOWN else ''} (clip ids are paths "
            f"relative to the clip folder, e.g. {ids[0]!r})"
        )


@contextmanager
def _quiet_loading():
    """No progress bars while diffusers / transformers load components (mwga draws its own)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()


class TextConditioning:
    """The text inputs of a family's denoiser (see the module docstring).

    Args:
        family: the denoiser's family (which inputs, what length).
        folder: the model folder (its text encoder, if any).
        captions, embeddings, prompt: ``model.captions``, ``model.embeddings``, ``model.prompt``.
        text_length: ``model.text_length`` (0: the pipeline's default length).
        device: where the text encoder runs.
    """

    def __init__(
        self,
        family: Family,
        folder: ModelFolder,
        captions: str,
        embeddings: str,
        prompt: str,
        text_length: int,
        device: str = "cpu",
    ) -> None:
        self.family, self.folder, self.prompt, self.device = family, folder, prompt, device
        fixed = family.fixed_text_length()
        if fixed is not None and text_length not in (0, fixed):
            raise ConfigValueError(
                "model.text_length", text_length, f"0 or {fixed} (the denoiser's text length)"
            )
        self.length = fixed or text_length or family.text_length
        if captions and embeddings:
            raise ConfigValueError(
                "model.embeddings", embeddings, '"" when model.captions is set (one source)'
            )
        needs_encoder = captions or (prompt and not embeddings)
        if needs_encoder and not folder.text_encoder:
            what = f"model.captions={captions}" if captions else f"model.prompt={prompt!r}"
            raise DataError(
                f"{what} needs the pipeline's text encoder, but {folder.root} has no text_encoder/ and "
                "tokenizer/: give precomputed model.embeddings instead"
            )
        self.captions = read_captions(Path(captions).expanduser()) if captions else None
        self.embeddings_path = Path(embeddings).expanduser() if embeddings else None
        if self.embeddings_path is not None and not self.embeddings_path.is_file():
            raise DataError(f"model.embeddings={embeddings}: no such file")
        self._pipeline = None
        self._embeddings: dict[str, torch.Tensor] | None = None

    # -- what the denoiser gets ---------------------------------------------------------------------

    def shared(self) -> dict[str, torch.Tensor]:
        """The condition of a clip without its own: ``model.prompt`` encoded, the embeddings file's ``""``
        entry, or the zero stand-in. Shape: name -> (1, ...)."""
        table = self._embedding_table()
        if table is not None and "" in table:
            return self._rows_from_table([""], table)
        if self.folder.text_encoder:
            return self._encode([self.prompt])
        return self.zeros()

    def per_clip(self, ids: list[str]) -> dict[str, torch.Tensor] | None:
        """Each clip's condition, or None when every clip gets :meth:`shared`. Shape: name -> (n, ...)."""
        if self.captions is not None:
            _check_names(set(self.captions), ids, f"model.captions ({len(self.captions)} captions)")
            return self._encode([self.captions.get(i, self.prompt) for i in ids])
        table = self._embedding_table()
        if table is not None:
            named = {key.split("#")[0] for key in table} - {""}
            _check_names(named, ids, f"model.embeddings={self.embeddings_path}")
            if named & set(ids):
                return self._rows_from_table(ids, table)
        return None

    def zeros(self) -> dict[str, torch.Tensor]:
        """The stand-in for the empty prompt without a text encoder. Shape: name -> (1, ...)."""
        import torch

        inputs = {HIDDEN: torch.zeros(1, self.length, self.family.text_dim)}
        if self.family.masked:
            inputs[MASK] = torch.ones(1, self.length)
        if self.family.pooled_dim is not None:
            inputs[POOLED] = torch.zeros(1, self.family.pooled_dim)
        return inputs

    # -- sources ------------------------------------------------------------------------------------

    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Prompts through the pipeline's ``encode_prompt``, each distinct prompt once, in batches."""
        import torch

        distinct = sorted(set(prompts))
        parts: list[dict[str, torch.Tensor]] = []
        with torch.no_grad():
            for start in range(0, len(distinct), PROMPT_BATCH):
                batch = distinct[start : start + PROMPT_BATCH]
                parts.append(self.family.encode_prompts(self.pipeline(), batch, self.length))
        encoded = {name: torch.cat([part[name] for part in parts]).float().cpu() for name in parts[0]}
        rows = torch.as_tensor([distinct.index(p) for p in prompts])
        return {name: value[rows].contiguous() for name, value in encoded.items()}

    def pipeline(self) -> Any:
        """The pipeline with only its text encoder(s) and tokenizer(s) loaded (once)."""
        if self._pipeline is None:
            import diffusers

            index = read_json(self.folder.root / "model_index.json")
            skipped = {
                name: None
                for name, value in index.items()
                if isinstance(value, list) and not name.startswith(("text_encoder", "tokenizer"))
            }
            pipeline_class = getattr(diffusers, str(self.folder.pipeline_class), None)
            if pipeline_class is None:
                raise DataError(f"{self.folder.root}: unknown pipeline class {self.folder.pipeline_class!r}")
            with _quiet_loading():
                pipeline = pipeline_class.from_pretrained(str(self.folder.root), **skipped)
            self._pipeline = pipeline.to(self.device)
        return self._pipeline

    def _embedding_table(self) -> dict[str, torch.Tensor] | None:
        if self.embeddings_path is None:
            return None
        if self._embeddings is None:
            from safetensors.torch import load_file

            try:
                self._embeddings = load_file(str(self.embeddings_path))
            except Exception as error:  # safetensors raises its own types for a damaged file
                raise DataError(
                    f"model.embeddings={self.embeddings_path}: not a safetensors file ({error})"
                ) from None
        return self._embeddings

    def _rows_from_table(self, ids: list[str], table: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rows of the embeddings file (clips without an entry: the ``""`` entry, else the zero stand-in)."""
        import torch

        source = f"model.embeddings={self.embeddings_path}"
        default = None
        rows: dict[str, list[torch.Tensor]] = {HIDDEN: [], MASK: [], POOLED: []}
        for clip in ids:
            if clip not in table:
                default = default or (self._rows_from_table([""], table) if "" in table else self.zeros())
                for name, value in default.items():
                    rows[name].append(value[0])
                continue
            hidden = table[clip].float()
            if hidden.ndim != 2 or hidden.shape[1] != self.family.text_dim:
                raise DataError(
                    f"{source}: {clip!r} has shape {tuple(hidden.shape)}; expected (L, {self.family.text_dim})"
                )
            rows[HIDDEN].append(hidden)
            if self.family.masked:
                rows[MASK].append(table.get(f"{clip}#mask", torch.ones(hidden.shape[0])).float())
            if self.family.pooled_dim is not None:
                if f"{clip}#pooled" not in table:
                    raise DataError(
                        f"{source}: {clip!r} has no {clip}#pooled entry (this family takes pooled text)"
                    )
                rows[POOLED].append(table[f"{clip}#pooled"].float().reshape(-1))
        lengths = {tuple(row.shape) for row in rows[HIDDEN]}
        if len(lengths) > 1:
            raise DataError(
                f"{source}: the embeddings have different shapes {sorted(lengths)}; pad them to one length"
            )
        return {name: torch.stack(values) for name, values in rows.items() if values}
