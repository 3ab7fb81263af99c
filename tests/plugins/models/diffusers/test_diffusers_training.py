"""``model=diffusers model.architecture=wan``: mwga builds a small Wan transformer and trains it on the
corpus (no folder). It trains (the loss falls, the weights move), is written to the model store and read
back bit-identically, its per-clip gradients are non-zero, the store key follows the architecture
fields, wrong field combinations are named, and ``mwga method=ours model=diffusers
model.architecture=wan`` composes and runs with the documented ``gradient.params``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "diffusers", reason="model=diffusers needs the diffusers extra: pip install -e '.[diffusers]'"
)

import torch  # noqa: E402
from mwga_plugins.gradients.diffusion import DiffusionGradient, DiffusionGradientConfig  # noqa: E402
from mwga_plugins.models.diffusers.adapter import DiffusersAdapter, DiffusersModelConfig  # noqa: E402
from mwga_plugins.models.diffusers.architectures import ARCHITECTURES  # noqa: E402

from mwga_core.api.errors import ConfigValueError, DataError  # noqa: E402
from mwga_core.api.models import TrainingConfig  # noqa: E402
from mwga_core.diffusion.training import train_denoiser, training_key  # noqa: E402
from mwga_core.pipeline.model_stage import load_or_train_model  # noqa: E402
from mwga_core.pipeline.run import run_attribution  # noqa: E402
from mwga_core.testing import make_context, small_analysed, small_corpus  # noqa: E402

#: the self-attention projection weights: Wan's counterpart of method=ours's ``temporal\.weight``
ATTENTION_WEIGHTS = r"attn1\.to_(q|k|v|out\.0)\.weight"
#: frames of the test clips: a multiple of the default patch's 2 frames
FRAMES = 4


def wan_config(steps: int = 4, **fields) -> DiffusersModelConfig:
    training = TrainingConfig(steps=steps, batch_size=4, warmup=1, checkpoints=[2], bf16=False, ema=0.0)
    return DiffusersModelConfig(name="diffusers", architecture="wan", training=training, **fields)


def test_the_wan_architecture_resolves_to_a_trainable_pixel_space_flow_model() -> None:
    adapter = DiffusersAdapter(wan_config(architecture_config={"num_layers": 1, "in_channels": 3}))
    assert adapter.can_train and adapter.codec is None and adapter.objective.kind == "flow"
    resolved = adapter.config.architecture_config
    assert resolved == {**ARCHITECTURES["wan"][1], "num_layers": 1, "in_channels": 3, "out_channels": 3}
    # flow_shift 1: sigma of index t is (t + 1) / N, the denoiser's timestep 1000 sigma
    torch.testing.assert_close(
        adapter.objective.sigmas[[0, 499, 999]].float(), torch.tensor([0.001, 0.5, 1.0])
    )
    shifted = DiffusersAdapter(wan_config(flow_shift=3.0)).objective.sigmas[499].item()
    assert shifted == pytest.approx(3 * 0.5 / (1 + 2 * 0.5))
    # the empty prompt: one all-zero text token of the architecture's text width
    assert adapter.text.shared()["encoder_hidden_states"].shape == (1, 1, 16)
    assert adapter.model_shape((16, 32, 32, 3)) == (3, 16, 32, 32)


def test_it_trains_is_stored_and_reloads_bit_identically(tmp_path: Path) -> None:
    corpus, ctx = small_corpus(num_frames=FRAMES), make_context(tmp_path)
    adapter = DiffusersAdapter(wan_config(steps=30))
    in_memory: dict[int, dict[str, torch.Tensor]] = {}
    log = train_denoiser(adapter, corpus.train, 6, ctx, lambda step, w: in_memory.update({step: state_of(w)}))
    assert log["parameters"] == 38272 and sorted(in_memory) == [2, 30]

    trained = load_or_train_model(adapter, corpus.train, ctx)
    assert not trained.loaded_from_cache and trained.steps == [2, 30] and trained.folder is not None
    again = load_or_train_model(DiffusersAdapter(wan_config(steps=30)), corpus.train, ctx)
    assert again.loaded_from_cache and again.key == trained.key
    module = again.module(30)
    for name, tensor in module.state_dict().items():  # the wrapper's names, as the trainer saved them
        assert torch.equal(tensor, in_memory[30][name]), name

    # it learned: on fixed noisy inputs the trained model's flow loss is below the initial model's
    torch.manual_seed(ctx.seed_for("model-init"))
    initial = adapter.build_fresh((FRAMES, 16, 16, 1), 6)
    assert any(not torch.equal(initial.state_dict()[n], t) for n, t in in_memory[30].items())
    x0 = adapter.encode(corpus.train.frames)
    generator = torch.Generator().manual_seed(5)
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.randint(0, 1000, (len(x0),), generator=generator)
    x_t, target = adapter.add_noise(x0, t, noise), adapter.target(x0, noise, t)

    def loss(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(adapter.training_loss(model.eval()(x_t, t), target, t).mean())

    assert loss(module) < 0.8 * loss(initial)  # measured: 0.93 vs 1.50


def state_of(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in weights.items()}


def test_per_clip_gradients_of_the_trained_model_are_non_zero(tmp_path: Path) -> None:
    clips, ctx = small_analysed(num_frames=FRAMES), make_context(tmp_path)
    trained = load_or_train_model(DiffusersAdapter(wan_config()), clips.clips, ctx)
    config = DiffusionGradientConfig(
        name="diffusion", timesteps=[100, 400], weighting="none", params=ATTENTION_WEIGHTS, chunk_size=4
    )
    source = DiffusionGradient(config)
    source.bind_model(trained)
    module = trained.module()
    selected = source.selected_parameter_names(module)
    assert len(selected) == 2 * 4 and all(re.search(r"\.attn1\.to_.*\.weight$", n) for n in selected)
    grads = np.concatenate([chunk.grads[0] for chunk in source.iter_gradients(clips, ctx)])
    assert grads.shape == (len(clips.clips), 2 * 4 * 32 * 32)
    assert np.isfinite(grads).all() and (np.linalg.norm(grads, axis=1) > 0).all()
    # every selected matrix gets a gradient (none sits behind a zero-initialised layer)
    per_matrix = np.abs(grads).reshape(len(grads), 8, -1).sum(axis=(0, 2))
    assert (per_matrix > 0).all()


def test_the_store_key_follows_the_architecture_fields(tmp_path: Path) -> None:
    corpus = small_corpus(num_frames=FRAMES)

    def key(**fields) -> str:
        return training_key(DiffusersAdapter(wan_config(**fields)), corpus.train, 6, seed=0)

    base = key()
    assert key() == base
    assert key(architecture_config={"num_layers": 2}) == base  # the default, spelt out
    assert len({base, key(architecture_config={"num_layers": 3}), key(flow_shift=2.0)}) == 3
    assert key(architecture_config={"ffn_dim": 32}) != base


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"path": "some/folder"}, 'path=.* expected "" with model.architecture=wan'),
        (
            {"architecture_config": {"num_layer": 3}},
            r"architecture_config.num_layer=3 .*WanTransformer3DModel",
        ),
        ({"space": "latent"}, "space='latent' .*has no VAE"),
        ({"objective": "eps"}, "objective='eps' .*flow"),
    ],
)
def test_fields_that_do_not_go_with_an_architecture_are_named(fields: dict, message: str) -> None:
    with pytest.raises(ConfigValueError, match=message):
        DiffusersAdapter(wan_config(**fields))


def test_architecture_fields_without_an_architecture_are_named() -> None:
    with pytest.raises(ConfigValueError, match="architecture_config=.*without model.architecture"):
        DiffusersAdapter(DiffusersModelConfig(name="diffusers", architecture_config={"num_layers": 3}))
    with pytest.raises(ConfigValueError, match="flow_shift=3.0"):
        DiffusersAdapter(DiffusersModelConfig(name="diffusers", flow_shift=3.0))


def test_clips_the_architecture_cannot_take_are_named() -> None:
    adapter = DiffusersAdapter(wan_config())
    with pytest.raises(DataError, match=r"model.architecture=wan: .*3 channels.*in_channels=3"):
        adapter.pretrained((16, 32, 32, 3), 1)
    with pytest.raises(
        DataError, match=r"model.architecture=wan: .*\(5, 32, 32\) is not a multiple .*\(2, 4, 4\)"
    ):
        adapter.pretrained((5, 32, 32, 1), 1)


def test_method_ours_with_the_wan_architecture_composes_and_runs(compose_config, ctx) -> None:
    command = ("method=ours", "model=diffusers", "model.architecture=wan")
    cfg = compose_config(*command)
    # the command line's model wins over the preset's model=video_denoiser_unconditional; its gradient
    # recipe selects the temporal convolutions, which Wan does not have: gradient.params says what to use
    assert cfg.model.name == "diffusers" and cfg.model.architecture == "wan"
    assert cfg.gradient.params == r"temporal\.weight" and cfg.gradient.contrast == "reverse_static"
    # a from_config argument is added to the (empty) mapping with Hydra's +
    assert compose_config(*command, "+model.architecture_config.num_layers=1").model.architecture_config == {
        "num_layers": 1
    }
    small = (
        "dataset.num_clips=24", "dataset.num_frames=4", "dataset.size=16", "model.training.steps=2",
        "model.training.checkpoints=[]", "gradient.timesteps=[100]", "projection.dim=64",
        f"gradient.params='{ATTENTION_WEIGHTS}'",
    )  # fmt: skip
    result = run_attribution(compose_config(*command, *small), ctx)
    assert result.scores.shape == (6, 24) and np.isfinite(result.scores).all()
    assert 0 <= result.evaluation.mean["NDCG@20"] <= 1 and len(result.evaluation.per_query) == 6


def test_a_checkpoint_of_the_architecture_is_loaded_instead_of_training(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    corpus, ctx = small_corpus(num_frames=FRAMES), make_context(tmp_path)
    trained = load_or_train_model(DiffusersAdapter(wan_config()), corpus.train, ctx)
    weights = {name: tensor.contiguous() for name, tensor in trained.module().state_dict().items()}
    save_file(weights, tmp_path / "wrapped.safetensors")  # as the model store holds it
    save_file({n.removeprefix("denoiser."): t for n, t in weights.items()}, tmp_path / "plain.safetensors")
    for name in ("wrapped", "plain"):
        adapter = DiffusersAdapter(wan_config(checkpoint=str(tmp_path / f"{name}.safetensors")))
        loaded = load_or_train_model(adapter, corpus.train, ctx)
        assert loaded.info == {"pretrained": True} and loaded.key.startswith("diffusers-")
        for key, tensor in loaded.module().state_dict().items():
            assert torch.equal(tensor, weights[key]), key
