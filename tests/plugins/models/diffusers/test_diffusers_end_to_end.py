"""model=diffusers end to end: ``mwga index <clips> --out X model=diffusers model.path=<folder>`` then
``mwga attribute X <query>`` for every family, with a tiny re-randomised model saved with
save_pretrained; the diffusion gradient source's per-clip gradients on it equal a per-clip loop, also
for the time-reversal contrast (reversed clips are encoded, not flipped latents); the model is named by
its weights' content and ``model.checkpoint`` replaces them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "diffusers", reason="model=diffusers needs the diffusers extra: pip install -e '.[diffusers]'"
)

import diffusers_tiny as tiny  # noqa: E402
import torch  # noqa: E402
from mwga_plugins.gradients.diffusion import DiffusionGradient, DiffusionGradientConfig  # noqa: E402
from mwga_plugins.models.diffusers.adapter import DiffusersAdapter, DiffusersModelConfig  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from mwga_core.api.clips import AnalysedClips, ClipSet  # noqa: E402
from mwga_core.api.errors import DataError  # noqa: E402
from mwga_core.api.models import weights_in_memory  # noqa: E402
from mwga_core.cli.main import main  # noqa: E402
from mwga_core.diffusion.engines import EngineSettings, ExampleBatch, SelectedParameters, make_engine  # noqa: E402
from mwga_core.pipeline.model_stage import load_or_train_model  # noqa: E402
from mwga_core.testing import make_context  # noqa: E402

#: a small, quick attribution: MOTIVE's masked loss on one timestep, all parameters, 32-dim features
QUICK = [
    "method=motive", "gradient.engine=vmap", "gradient.timesteps=[300]", "gradient.params=all",
    "projection.dim=32", f"dataset.num_frames={tiny.CLIP_FRAMES}", f"dataset.size=[{tiny.CLIP_SIZE}]",
    "dataset.grayscale=false", "model=diffusers", "model.text_length=8",
]  # fmt: skip
#: family -> the VAE its folder gets in the end-to-end test (every family is attributed in latent space)
VAES = {
    "wan": "wan",
    "cogvideox": "cogvideox",
    "ltx": "ltx",
    "hunyuan": "hunyuan",
    "unet3d": "image",
    "animatediff": "image",
    "mochi": "mochi",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    tiny.write_clips(root / "clips", 6)
    tiny.write_clips(root / "queries", 2, seed=9)
    return root


def index_and_attribute(tmp_path: Path, corpus: Path, folder: Path, capsys, *extra: str) -> dict:
    index = tmp_path / "index"
    args = ["index", str(corpus / "clips"), "--out", str(index), *QUICK, f"model.path={folder}", *extra]
    assert main(args) == 0, capsys.readouterr().err
    assert "indexed 6 clips" in capsys.readouterr().out
    queries = [str(corpus / "queries" / name) for name in ("right_00.npy", "left_01.npy")]
    out = tmp_path / "attribution"
    assert (
        main(["attribute", str(index), *queries, "--top-k", "3", "--out", str(out), "--sheet-rows", "0"]) == 0
    )
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["checkpoint_id"].startswith("diffusers-")
    return json.loads((out / "attribution.json").read_text())


def check_attribution(document: dict) -> None:
    assert [len(query["top"]) for query in document["queries"]] == [3, 3]
    scores = [entry["score"] for query in document["queries"] for entry in query["top"]]
    assert all(np.isfinite(scores)) and len(set(scores)) > 1


def test_a_wan_pipeline_with_vae_text_encoder_and_captions_round_trips(
    tmp_path: Path, corpus: Path, capsys
) -> None:
    folder = tiny.save_wan_pipeline(tmp_path / "wan", seed=11)
    ids = sorted(path.name for path in (corpus / "clips").iterdir())
    captions = tmp_path / "captions.csv"
    captions.write_text("clip,caption\n" + "".join(f"{i},a car drives {i.split('_')[0]}\n" for i in ids))
    document = index_and_attribute(tmp_path, corpus, folder, capsys, f"model.captions={captions}")
    check_attribution(document)
    out = tmp_path / "captioned"
    queries = [str(corpus / "queries" / "right_00.npy"), str(corpus / "queries" / "left_01.npy")]
    args = [
        "attribute",
        str(tmp_path / "index"),
        *queries,
        "--top-k",
        "3",
        "--out",
        str(out),
        "--sheet-rows",
        "0",
    ]
    assert main([*args, "--caption", "a car drives right"]) == 0
    captioned = json.loads((out / "attribution.json").read_text())
    # the caption is the queries' prompt: their features, hence their scores, change
    assert [e["score"] for e in captioned["queries"][0]["top"]] != [
        e["score"] for e in document["queries"][0]["top"]
    ]


@pytest.mark.parametrize("family", [f for f in tiny.FAMILIES if f != "wan"])
def test_every_family_round_trips(tmp_path: Path, corpus: Path, capsys, family: str) -> None:
    folder = tiny.save_family(tmp_path / family, family, seed=3, vae_kind=VAES.get(family))
    # Mochi's VAE encodes 1 + 6k frames: of the clips' 9 frames, the first 7
    extra = ["model.frames=trim"] if family == "mochi" else []
    check_attribution(index_and_attribute(tmp_path, corpus, folder, capsys, *extra))


def test_errors_reach_the_command_line_as_one_line(tmp_path: Path, corpus: Path, capsys) -> None:
    args = ["index", str(corpus / "clips"), "--out", str(tmp_path / "index"), *QUICK]
    assert main([*args, f"model.path={tmp_path / 'missing'}"]) == 2
    assert f"error: model.path={tmp_path / 'missing'}: no such folder" in capsys.readouterr().err
    folder = tiny.save_family(tmp_path / "ltx", "ltx", vae_kind="ltx")
    assert main([*args, f"model.path={folder}", "dataset.num_frames=8"]) == 2
    assert (
        "encodes 1 + 2k frames and the clips have 8: set dataset.num_frames=9 (or 7)"
        in capsys.readouterr().err
    )


def analysed(frames: np.ndarray) -> AnalysedClips:
    ids = [f"clip_{i}" for i in range(len(frames))]
    return AnalysedClips(ClipSet(frames=frames, labels=np.zeros(len(frames), dtype=np.int64), ids=ids))


def test_gradient_source_matches_a_per_clip_loop_with_encoded_reversal(tmp_path: Path) -> None:
    folder = tiny.save_family(tmp_path / "wan", "wan", seed=4, vae_kind="wan")
    adapter = DiffusersAdapter(DiffusersModelConfig(name="diffusers", path=str(folder), text_length=8))
    ctx = make_context(tmp_path)
    frames = np.random.default_rng(1).uniform(0, 1, (3, tiny.CLIP_FRAMES, tiny.CLIP_SIZE, tiny.CLIP_SIZE, 3))
    clips = analysed(frames.astype(np.float32))
    trained = load_or_train_model(adapter, clips.clips, ctx)
    gradients = {}
    for contrast in ("none", "reverse"):
        config = DiffusionGradientConfig(
            name="diffusion", engine="vmap", weighting="none", frame_normalize=False, timesteps=[250],
            contrast=contrast, chunk_size=2,
        )  # fmt: skip
        source = DiffusionGradient(config)
        source.bind_model(trained)
        chunks = list(source.iter_gradients(clips, ctx))
        gradients[contrast] = torch.cat([torch.as_tensor(chunk.grads[0]) for chunk in chunks])
        objective = source.objective(trained, ctx)
    module = trained.module()
    loop = make_engine("loop", EngineSettings())
    selection = SelectedParameters.of(module, [name for name, _ in module.named_parameters()])

    def per_clip(x0: torch.Tensor) -> torch.Tensor:
        return loop.gradients(selection, objective, ExampleBatch(x0, torch.zeros(3, dtype=torch.int64)))

    plain = per_clip(adapter.encode(clips.clips.frames))
    reversed_clips = per_clip(adapter.encode(np.ascontiguousarray(clips.clips.frames[:, ::-1])))
    torch.testing.assert_close(gradients["none"], plain, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gradients["reverse"], (plain - reversed_clips) / 2, rtol=1e-4, atol=1e-6)
    assert (plain.norm(dim=1) > 0).all() and (reversed_clips - plain).norm() > 1e-3 * plain.norm()


def test_the_weights_content_names_the_model_and_a_checkpoint_replaces_them(tmp_path: Path) -> None:
    shape = (tiny.CLIP_FRAMES, tiny.CLIP_SIZE, tiny.CLIP_SIZE, 3)
    first = tiny.save_family(tmp_path / "first", "cogvideox", seed=1)
    copy = tiny.save_family(tmp_path / "copy", "cogvideox", seed=1)
    other = tiny.save_family(tmp_path / "other", "cogvideox", seed=2)

    def key(folder: Path, **fields) -> str:
        config = DiffusersModelConfig(name="diffusers", path=str(folder), **fields)
        return DiffusersAdapter(config).pretrained(shape, 1).key

    assert key(first) == key(copy) != key(other)
    assert key(first, prompt="", captions="") == key(first, text_length=8)  # conditioning is not the model
    state = load_file(other / "transformer" / "diffusion_pytorch_model.safetensors")
    save_file(state, tmp_path / "finetuned.safetensors")
    assert key(first, checkpoint=str(tmp_path / "finetuned.safetensors")) not in (key(first), key(other))
    adapter = DiffusersAdapter(
        DiffusersModelConfig(
            name="diffusers", path=str(first), checkpoint=str(tmp_path / "finetuned.safetensors")
        )
    )
    weights = adapter.pretrained(shape, 1).checkpoints[0]
    torch.testing.assert_close(dict(weights_in_memory(weights)), state)
    wan_state = load_file(
        tiny.save_family(tmp_path / "wan", "wan") / "transformer" / "diffusion_pytorch_model.safetensors"
    )
    save_file(wan_state, tmp_path / "wrong.safetensors")
    with pytest.raises(
        DataError,
        match=r"model.checkpoint=.*wrong.safetensors: .*do not fit the folder's CogVideoXTransformer3DModel: missing: ",
    ):
        key(first, checkpoint=str(tmp_path / "wrong.safetensors"))
