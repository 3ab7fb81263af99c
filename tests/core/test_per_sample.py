"""Per-sample gradients from one batched backward equal a per-sample loop, layer type by layer type."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mwga_core.diffusion.per_sample import UnsupportedLayerError, per_sample_gradients


class FrameNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame (a subclass that reshapes, as the video denoiser's does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, ch, t, h, w = x.shape
        per_frame = x.transpose(1, 2).reshape(b * t, ch, h, w)
        return super().forward(per_frame).reshape(b, t, ch, h, w).transpose(1, 2)


class Scale(nn.Module):
    """A custom layer with its own parameter: exercises the generic vector-Jacobian fallback."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain.reshape(1, -1, *(1,) * (x.ndim - 2)).tanh()


class Zoo(nn.Module):
    """Every supported layer kind, a reused layer and a per-token layer on sample-major rows."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(3, 6)
        self.patch = nn.Linear(2, 6)
        self.spatial = nn.Conv3d(6, 6, (1, 3, 3), padding=(0, 1, 1))
        self.temporal = nn.Conv3d(6, 6, (3, 1, 1), padding=(1, 0, 0), bias=False)
        self.strided = nn.Conv3d(6, 6, (1, 3, 3), stride=(1, 2, 2), dilation=(1, 1, 2), padding=(0, 1, 2))
        self.norm = FrameNorm(3, 6)
        self.plain_norm = nn.GroupNorm(2, 6)
        self.conv1d = nn.Conv1d(6, 4, 3, stride=2, dilation=2)
        self.conv2d = nn.Conv2d(6, 6, 3, padding=1)
        self.scale = Scale(6)
        self.token = nn.Linear(6, 6)
        self.out = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]  # x: (B, T=4, H=6, W=6, 2)
        h = self.patch(x).permute(0, 4, 1, 2, 3) + self.embed(labels)[:, :, None, None, None]
        h = self.norm(torch.tanh(self.spatial(h)))
        h = self.temporal(h) + self.temporal(h.flip(2))  # one layer used twice
        h = self.scale(self.plain_norm(h))
        tokens = h.permute(0, 2, 3, 4, 1).reshape(b * 4 * 36, 6)  # sample-major rows
        h = h + self.token(tokens).reshape(b, 4, 6, 6, 6).permute(0, 4, 1, 2, 3)
        h = self.strided(h)  # (B, 6, 4, 3, 3)
        h = self.conv2d(h.mean(dim=2)).flatten(2)  # (B, 6, 9)
        return self.out(self.conv1d(h).transpose(1, 2)).flatten(1)  # (B, 3)


def losses_of(x: torch.Tensor, labels: torch.Tensor):
    def losses(forward):
        return (forward(x, labels) ** 2).mean(dim=1)

    return losses


def naive(module: nn.Module, names: list[str], x: torch.Tensor, labels: torch.Tensor) -> dict:
    params = dict(module.named_parameters())
    rows = []
    for i in range(x.shape[0]):
        loss = (module(x[i : i + 1], labels[i : i + 1]) ** 2).mean()
        rows.append(torch.autograd.grad(loss, [params[n] for n in names]))
    return {name: torch.stack([row[j] for row in rows]) for j, name in enumerate(names)}


@pytest.fixture
def zoo_and_batch():
    torch.manual_seed(0)
    module = Zoo().eval()
    with torch.no_grad():  # non-trivial affine parameters for the norms
        for norm in (module.norm, module.plain_norm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    return module, torch.randn(5, 4, 6, 6, 2), torch.tensor([0, 2, 1, 1, 0])


@pytest.mark.parametrize("selection", ["all", "temporal", "norms"])
def test_per_sample_gradients_equal_a_per_sample_loop(zoo_and_batch, selection) -> None:
    module, x, labels = zoo_and_batch
    names = [n for n, _ in module.named_parameters()]
    if selection == "temporal":
        names = [n for n in names if n.startswith("temporal")]
    elif selection == "norms":
        names = [n for n in names if "norm" in n or "scale" in n or "embed" in n]
    params = {n: p for n, p in module.named_parameters() if n in names}
    frozen = {n: p.detach() for n, p in module.named_parameters() if n not in names}
    fast = per_sample_gradients(module, params, frozen, losses_of(x, labels), 5)
    expected = naive(module, names, x, labels)
    assert list(fast) == names
    for name in names:
        assert fast[name].shape == (5, *params[name].shape)
        torch.testing.assert_close(fast[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)
    assert all(p.grad is None for p in module.parameters())  # the module's own .grad is untouched


def test_unused_parameters_get_zero_gradients(zoo_and_batch) -> None:
    module, x, labels = zoo_and_batch
    spare = nn.Linear(3, 3)
    module.add_module("spare", spare)
    params = {"spare.weight": spare.weight, "patch.bias": module.patch.bias}
    frozen = {n: p.detach() for n, p in module.named_parameters() if n not in params}
    grads = per_sample_gradients(module, params, frozen, losses_of(x, labels), 5)
    assert torch.count_nonzero(grads["spare.weight"]) == 0
    assert torch.count_nonzero(grads["patch.bias"]) > 0


def test_a_layer_returning_a_tuple_is_refused() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(2))

        def forward(self, x):
            return x * self.w, x

    module = Pair()
    with pytest.raises(UnsupportedLayerError, match="engine=batched: .* returns no single tensor"):
        per_sample_gradients(
            module, {"w": module.w}, {}, lambda forward: forward(torch.ones(3, 2))[0].sum(1), 3
        )


def test_losses_must_be_per_sample() -> None:
    module = nn.Linear(2, 1)
    params = dict(module.named_parameters())
    with pytest.raises(ValueError, match=r"\(3,\)"):
        per_sample_gradients(module, params, {}, lambda forward: forward(torch.ones(3, 2)).sum(), 3)
