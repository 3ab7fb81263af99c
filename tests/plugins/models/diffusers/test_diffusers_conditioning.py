"""model=diffusers text conditioning: captions through the pipeline's own text encoder, precomputed
embeddings keyed by clip id, the empty prompt by default, and clear errors for what cannot work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "diffusers", reason="model=diffusers needs the diffusers extra: pip install -e '.[diffusers]'"
)

import diffusers_tiny as tiny  # noqa: E402
import torch  # noqa: E402
from mwga_plugins.models.diffusers.adapter import DiffusersAdapter, DiffusersModelConfig  # noqa: E402
from mwga_plugins.models.diffusers.families import HIDDEN, MASK, POOLED  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from mwga_core.api.clips import ClipSet  # noqa: E402
from mwga_core.api.errors import ConfigValueError, DataError  # noqa: E402
from mwga_core.api.models import weights_in_memory  # noqa: E402

LENGTH = 6
CLIP_SHAPE = (tiny.CLIP_FRAMES, tiny.CLIP_SIZE, tiny.CLIP_SIZE, 3)


@pytest.fixture(scope="module")
def wan(tmp_path_factory) -> Path:
    return tiny.save_wan_pipeline(tmp_path_factory.mktemp("wan") / "pipeline", seed=7)


def clip_set(ids: list[str]) -> ClipSet:
    frames = np.zeros((len(ids), *CLIP_SHAPE), dtype=np.float32)
    return ClipSet(frames=frames, labels=np.full(len(ids), -1), ids=ids)


def adapter_for(folder: Path, **fields) -> DiffusersAdapter:
    fields.setdefault("text_length", LENGTH)
    return DiffusersAdapter(DiffusersModelConfig(name="diffusers", path=str(folder), **fields))


def reference_embeddings(folder: Path, prompts: list[str]) -> torch.Tensor:
    import diffusers

    pipeline = diffusers.WanPipeline.from_pretrained(folder, transformer=None, vae=None, scheduler=None)
    with torch.no_grad():
        return pipeline.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=LENGTH)[
            0
        ]


def test_captions_are_encoded_by_the_pipelines_text_encoder(wan: Path, tmp_path: Path) -> None:
    captions = tmp_path / "captions.csv"
    captions.write_text("clip,caption\nb.npy,a car drives left\na.npy,the ball rolls up\n")
    adapter = adapter_for(wan, captions=str(captions))
    condition = adapter.condition(clip_set(["a.npy", "b.npy", "c.npy"]))
    expected = reference_embeddings(
        wan, ["the ball rolls up", "a car drives left", ""]
    )  # c.npy: model.prompt
    assert set(condition) == {HIDDEN}
    torch.testing.assert_close(condition[HIDDEN], expected)
    assert float((condition[HIDDEN][0] - condition[HIDDEN][1]).abs().max()) > 1e-3
    # the captions reach the prediction: the same clip predicts differently under two captions
    weights = weights_in_memory(adapter.pretrained(CLIP_SHAPE, 1).checkpoints[0])
    module = adapter.load(weights, CLIP_SHAPE, 1)
    x = torch.randn((2, *adapter.model_shape(CLIP_SHAPE)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        captioned = module(x, torch.tensor([300, 300]), None, **{HIDDEN: condition[HIDDEN][:2]})
        default = module(x, torch.tensor([300, 300]), None)
    assert float((captioned - default).abs().max()) > 1e-4


def test_the_default_is_the_empty_prompt_shared_by_every_clip(wan: Path, tmp_path: Path) -> None:
    adapter = adapter_for(wan)
    assert adapter.condition(clip_set(["a.npy", "b.npy"])) is None  # nothing per clip: a shared input
    torch.testing.assert_close(adapter.text.shared()[HIDDEN], reference_embeddings(wan, [""]))
    prompted = adapter_for(wan, prompt="a camera pan left")
    torch.testing.assert_close(
        prompted.text.shared()[HIDDEN], reference_embeddings(wan, ["a camera pan left"])
    )
    bare = tiny.save_family(tmp_path / "bare", "ltx")  # no text encoder: an all-zero stand-in, mask all ones
    shared = adapter_for(bare).text.shared()
    assert shared[HIDDEN].shape == (1, LENGTH, tiny.TEXT_DIM) and not shared[HIDDEN].any()
    assert shared[MASK].shape == (1, LENGTH) and bool(shared[MASK].all())


def test_precomputed_embeddings_are_read_by_clip_id(tmp_path: Path) -> None:
    folder = tiny.save_family(tmp_path / "hunyuan", "hunyuan")
    generator = torch.Generator().manual_seed(0)
    table = {
        "a.npy": torch.randn((LENGTH, tiny.TEXT_DIM), generator=generator),
        "a.npy#mask": torch.tensor([1.0, 1, 1, 0, 0, 0]),
        "a.npy#pooled": torch.randn(8, generator=generator),
        "": torch.zeros((LENGTH, tiny.TEXT_DIM)),
        "#pooled": torch.ones(8),
    }
    save_file(table, tmp_path / "embeddings.safetensors")
    adapter = adapter_for(folder, embeddings=str(tmp_path / "embeddings.safetensors"))
    condition = adapter.condition(clip_set(["b.npy", "a.npy"]))
    torch.testing.assert_close(condition[HIDDEN][1], table["a.npy"])
    torch.testing.assert_close(condition[MASK], torch.stack([torch.ones(LENGTH), table["a.npy#mask"]]))
    torch.testing.assert_close(condition[POOLED], torch.stack([torch.ones(8), table["a.npy#pooled"]]))
    assert not condition[HIDDEN][0].any()  # b.npy has no entry: the "" entry
    del table["a.npy#pooled"]
    save_file(table, tmp_path / "no_pooled.safetensors")
    with pytest.raises(DataError, match="no a.npy#pooled entry"):
        adapter_for(folder, embeddings=str(tmp_path / "no_pooled.safetensors")).condition(clip_set(["a.npy"]))


def test_a_captions_file_naming_unknown_clips_is_an_error(wan: Path, tmp_path: Path) -> None:
    captions = tmp_path / "captions.csv"
    captions.write_text("clip,caption\na.npy,a car\nclip_9.npy,a ball\n")
    adapter = adapter_for(wan, captions=str(captions))
    with pytest.raises(DataError, match=r"names 1 clip\(s\) that are not among the 2 clips: clip_9.npy"):
        adapter.condition(clip_set(["a.npy", "b.npy"]))
    with pytest.warns(UserWarning, match="names none of these 1 clips"):  # queries: model.prompt
        assert adapter.condition(clip_set(["query.mp4"]))[HIDDEN].shape == (1, LENGTH, tiny.TEXT_DIM)
    (tmp_path / "labels.csv").write_text("clip,label\na.npy,pan\n")
    with pytest.raises(DataError, match="expected a CSV with the header clip,caption"):
        adapter_for(wan, captions=str(tmp_path / "labels.csv"))


def test_text_without_a_text_encoder_or_from_two_sources_is_refused(wan: Path, tmp_path: Path) -> None:
    bare = tiny.save_family(tmp_path / "bare", "wan")
    captions = tmp_path / "captions.csv"
    captions.write_text("clip,caption\na.npy,a car\n")
    with pytest.raises(DataError, match="needs the pipeline's text encoder.*no text_encoder/"):
        adapter_for(bare, captions=str(captions))
    with pytest.raises(DataError, match="model.prompt='a car' needs the pipeline's text encoder"):
        adapter_for(bare, prompt="a car")
    with pytest.raises(ConfigValueError, match="model.embeddings"):
        adapter_for(wan, captions=str(captions), embeddings=str(captions))
    with pytest.raises(DataError, match="model.embeddings=.*no such file"):
        adapter_for(wan, embeddings=str(tmp_path / "missing.safetensors"))


#: family -> the text inputs its pipeline's encode_prompt gives the denoiser
TEXT_INPUTS = {
    "cogvideox": {HIDDEN},
    "unet3d": {HIDDEN},
    "animatediff": {HIDDEN},
    "ltx": {HIDDEN, MASK},
    "hunyuan": {HIDDEN, MASK, POOLED},
    "mochi": {HIDDEN, MASK},
}


@pytest.mark.parametrize("family", sorted(TEXT_INPUTS))
def test_every_familys_pipeline_encodes_captions_the_denoiser_takes(tmp_path: Path, family: str) -> None:
    """Each pipeline's own encode_prompt (T5, CLIP per frame, Llama + CLIP, masks) feeds its denoiser."""
    folder = tiny.save_text_pipeline(tmp_path / family, family)
    captions = tmp_path / "captions.csv"
    captions.write_text("clip,caption\na.npy,a car drives left\nb.npy,the ball rolls up\n")
    # Mochi's VAE takes 1 + 6k frames: of the 9, the first 7
    adapter = adapter_for(
        folder, captions=str(captions), frames="trim", text_length=0 if family == "cogvideox" else 8
    )
    condition = adapter.condition(clip_set(["a.npy", "b.npy"]))
    assert set(condition) == TEXT_INPUTS[family] and all(len(value) == 2 for value in condition.values())
    assert float((condition[HIDDEN][0] - condition[HIDDEN][1]).abs().max()) > 1e-4
    module = adapter.load(weights_in_memory(adapter.pretrained(CLIP_SHAPE, 1).checkpoints[0]), CLIP_SHAPE, 1)
    x = torch.randn((2, *adapter.model_shape(CLIP_SHAPE)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        captioned = module(x, torch.tensor([300, 300]), None, **condition)
        default = module(x, torch.tensor([300, 300]), None)  # the empty prompt, shared
    assert captioned.shape == x.shape and torch.isfinite(captioned).all()
    assert float((captioned - default).abs().max()) > 1e-5
