"""Factorized per-sample weight gradients: a layer's P_out (x) P_in projection from its two factors.

A Linear or Conv layer's per-sample weight gradient is a sum over positions s of an outer product,
``dW_i = sum_s g_i[s] u_i[s]^T`` (g: the gradient at the layer's output; u: its input, or for a Conv the
input window under the kernel, flattened as the weight's (C_in, *kernel)). Its Kronecker projection with
a layer's :class:`~mwga_core.api.projectors.LayerFactors` (P_out, P_in) is therefore

    P_out dW_i P_in^T = sum_s (P_out g_i[s]) (P_in u_i[s])^T,   (k_out, k_in) per sample,

formed from the two projected factors: dW_i is never materialised. For a Conv, ``P_in u`` at every
output position is one convolution of the input with P_in as its kernel (k_in output channels, the
layer's stride, padding and dilation), so no input window is unfolded either. The batched engine
(:func:`~mwga_core.diffusion.per_sample.per_sample_gradients`) takes ``P_in u`` in its forward hook and
keeps only that (k_in channels) and the output's place in the graph, so the layer's input and output are
freed once the backward has passed them; :func:`project_weight_gradient` is the same projection of a
materialised gradient (the other engines, and the reference the factorized path equals).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from mwga_core.api.projectors import LayerFactors


def is_plain_linear(owner: torch.nn.Module) -> bool:
    """A Linear with its own forward."""
    from torch import nn

    return isinstance(owner, nn.Linear) and type(owner).forward is nn.Linear.forward


def is_plain_conv(owner: torch.nn.Module) -> bool:
    """A Conv1d/2d/3d with its own forward, one group and explicit zero padding."""
    from torch import nn

    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return (
        isinstance(owner, convs)
        and type(owner).forward in (conv.forward for conv in convs)
        and owner.groups == 1
        and owner.padding_mode == "zeros"
        and not isinstance(owner.padding, str)
    )


def factor_shape(module: torch.nn.Module, name: str) -> tuple[int, int] | None:
    """(d_out, d_in) of the weight ``name`` when its per-sample gradient has the factor form
    ``sum_s g[s] u[s]^T`` this module computes in closed form: the weight of a Linear (d_in: in_features)
    or of a Conv (d_in: C_in x kernel size, the weight's flattened trailing dims); None otherwise."""
    path, _, attribute = name.rpartition(".")
    owner = module.get_submodule(path)
    if attribute != "weight" or not (is_plain_linear(owner) or is_plain_conv(owner)):
        return None
    weight = owner.weight
    return int(weight.shape[0]), int(weight[0].numel())


@dataclass(frozen=True)
class ProjectedInput:
    """A factorized layer's P_in u at every position, and its factors.

    Shape: value (batch, S, k_in) for a Linear (its rows folded per sample), (N, k_in, S') for a Conv.
    """

    value: torch.Tensor
    factors: LayerFactors


def project_input(
    owner: torch.nn.Module, x: torch.Tensor, factors: LayerFactors, batch: int
) -> ProjectedInput:
    """P_in u for every position of a plain Linear or Conv's input ``x`` (float32, outside autocast)."""
    import torch

    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        if isinstance(owner, torch.nn.Linear):
            return ProjectedInput(x.float().reshape(batch, -1, x.shape[-1]) @ factors.inp.T, factors)
        # P_in u[s] for every output position s is the convolution of the input with P_in as its kernel
        # (k_in output channels, the layer's stride, padding and dilation): no input window is unfolded.
        kernel = factors.inp.reshape(-1, *owner.weight.shape[1:])
        functional = torch.nn.functional
        convolve = (functional.conv1d, functional.conv2d, functional.conv3d)[kernel.ndim - 3]
        value = convolve(x.float(), kernel, None, owner.stride, owner.padding, owner.dilation)
        return ProjectedInput(value.flatten(2), factors)


def factored_gradients(
    owner: torch.nn.Module, mine: dict, projected: ProjectedInput, grad_out: torch.Tensor, batch: int
) -> dict[str, torch.Tensor]:
    """A factorized layer's weight gradient, projected, sum_s (P_out g[s]) (P_in u[s])^T, and its bias's.

    Shape: grad_out (N, ..., out) (Linear) or (N, C_out, *S') (Conv) -> weight (batch or N, k_out, k_in),
    bias (batch or N, out).
    """
    import torch

    p_out = projected.factors.out
    out = {}
    if isinstance(owner, torch.nn.Linear):
        g = grad_out.float().reshape(batch, -1, grad_out.shape[-1])
        out["weight"] = (g @ p_out.T).transpose(1, 2).bmm(projected.value)
        if "bias" in mine:
            out["bias"] = g.sum(dim=1)
    else:
        g = grad_out.float().reshape(grad_out.shape[0], grad_out.shape[1], -1)
        out["weight"] = (p_out @ g).bmm(projected.value.transpose(1, 2))
        if "bias" in mine:
            out["bias"] = g.sum(dim=2)
    return out


def project_weight_gradient(grad: torch.Tensor, factors: LayerFactors) -> torch.Tensor:
    """P_out G P_in^T for each row's materialised weight gradient G (d_out, d_in: the trailing dims
    flattened), the reference the factorized path equals.

    Shape: grad (N, d_out, ...) -> (N, k_out, k_in).
    """
    rows = grad.reshape(grad.shape[0], factors.out.shape[1], -1)
    return factors.out @ rows @ factors.inp.T
