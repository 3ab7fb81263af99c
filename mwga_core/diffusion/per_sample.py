"""Per-sample parameter gradients from ONE batched forward and backward pass.

``torch.func.vmap(grad(f))`` differentiates every sample through its own vectorised graph. When samples
do not interact (no batch statistics, no attention across samples), the gradient of ``sum_i loss_i``
with respect to a layer's *output* already holds, in sample i's rows, the gradient of ``loss_i`` alone.
So one batched forward, one backward that asks autograd only for the outputs of the layers that own
selected parameters, and a closed-form per-sample weight gradient per layer give every sample's gradient:

* ``nn.Linear``: ``dW_i = sum_s g_i[s]^T x_i[s]`` over the sample's tokens s (a batched matmul).
* ``nn.Conv1d/2d/3d`` (zero padding, one group): the samples become the groups of one grouped
  convolution whose weight gradient is per sample; a kernel along the first dim only uses one batched
  matmul per kernel offset instead (its input windows are views, no copy).
* ``nn.GroupNorm`` and subclasses that keep its contract (output ``x_hat * weight[c] + bias[c]``,
  channels on dim 1; e.g. a per-frame norm): ``dW_i = sum g_i x_hat_i``, with ``x_hat`` from the
  module's own forward at weight 1 and bias 0.
* any other module owning a selected parameter (Embedding, custom layers): the vector-Jacobian product
  of that module alone, ``vmap``-ed over its input rows.

Only the outputs of layers owning selected parameters are differentiated, so nothing below the first
selected layer is back-propagated and frozen weights get no gradient.

With layer ``factors``, Linear and Conv weights get their projected gradient P_out dW P_in^T from the
two projected factors instead (:mod:`mwga_core.diffusion.factorized`).

Requirements: samples are independent; every module owning a selected parameter takes its rows on dim 0
of its tensor arguments (no tensor keyword arguments) and returns one tensor with rows on dim 0; rows are
either the samples or a sample-major flattening of them (``(n * m, ...)`` from a ``(n, m, ...)``
reshape, as a per-frame or per-token layer sees them). Use ``torch.func`` (``gradient.engine=vmap``) for
anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from mwga_core.api.projectors import LayerFactors

Forward = Callable[..., "torch.Tensor"]


class UnsupportedLayerError(TypeError):
    """A layer that owns selected parameters has a form the batched engine cannot read its per-sample
    gradient from (no single output tensor, tensor keyword arguments); the vmap engine can."""


def per_sample_gradients(
    module: torch.nn.Module,
    params: dict[str, torch.Tensor],
    frozen: dict[str, torch.Tensor],
    losses: Callable[[Forward], torch.Tensor],
    batch: int,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    regions: int = 1,
    factors: Mapping[str, LayerFactors] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sample gradients of ``losses`` with respect to ``params``.

    ``losses(forward)`` calls ``forward(*args, **kwargs)`` (the module with ``params`` and ``frozen`` swapped in,
    under ``autocast()``) on a batch of ``batch`` independent samples and returns each sample's
    objective, or m objectives per sample (e.g. the loss of each spatial cell): the forward pass is then
    shared and one backward per objective column gives m gradients per sample (memory: the forward's
    graph is kept until the last). With ``regions`` = r > 1, each weight gradient is also split by where in the layer's
    output it comes from: the sum over output positions is taken per cell of an r x r grid over the
    output's last two (spatial) dims, for channel-first layers (Conv, GroupNorm); the r^2 cells sum to
    the whole gradient. A weight named in ``factors`` (one that
    :func:`~mwga_core.diffusion.factorized.factor_shape` accepts) gets its projected gradient
    P_out dW P_in^T, computed from the projected factors (:mod:`mwga_core.diffusion.factorized`).

    Shape:
        losses(forward): (batch,), or (batch, m) for m objectives per sample.
        factors: name -> (P_out (k_out, d_out), P_in (k_in, d_in)) on the parameters' device.
        returns: name -> (batch, *params[name].shape), or (batch, r^2, *shape) when regions > 1, or
        (batch, m, *shape) for m objectives per sample (``regions`` must then be 1);
        (k_out, k_in) in place of the shape for a name in ``factors``; float32 (the parameter's dtype).
    """
    import torch
    from torch.autograd.graph import get_gradient_edge
    from torch.func import functional_call

    from mwga_core.diffusion.factorized import (
        ProjectedInput,
        factored_gradients,
        is_plain_conv,
        is_plain_linear,
        project_input,
    )

    owners: dict[str, list[tuple[str, str]]] = {}  # module path -> [(attribute, parameter name)]
    for name in params:
        path, _, attribute = name.rpartition(".")
        owners.setdefault(path, []).append((attribute, name))
    leaves = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    factors = factors or {}
    # module path -> the factors of its weight, for layers that take the factorized path
    projections = {
        path: factors[name] for path, pairs in owners.items() for attribute, name in pairs if name in factors
    }
    #: (path, its inputs or a ProjectedInput, its output or (factorized) the output's gradient edge, rows)
    captured: list[tuple[str, tuple | ProjectedInput, object, int]] = []

    def capture(path: str):
        def hook(_module, args, kwargs, output):
            where = f"module {path or type(module).__name__!r}"
            if not isinstance(output, torch.Tensor):
                raise UnsupportedLayerError(f"engine=batched: {where} returns no single tensor")
            if any(isinstance(v, torch.Tensor) for v in kwargs.values()):
                raise UnsupportedLayerError(f"engine=batched: {where} takes tensor keyword arguments")
            if not output.requires_grad:
                return
            if (
                path in projections
                and len(args) == 1
                and output.shape[0] % batch == 0  # else the loop below refuses the layer
                and (is_plain_linear(_module) or is_plain_conv(_module))
            ):
                projected = project_input(_module, args[0].detach(), projections[path], batch)
                captured.append((path, projected, get_gradient_edge(output), output.shape[0]))
            else:
                inputs = tuple(a.detach() if torch.is_tensor(a) else a for a in args)
                captured.append((path, inputs, output, output.shape[0]))

        return hook

    def forward(*args, **kwargs):
        with autocast():
            return functional_call(module, (leaves, frozen), args, kwargs)

    handles = [
        module.get_submodule(path).register_forward_hook(capture(path), with_kwargs=True) for path in owners
    ]
    try:
        per_sample = losses(forward)
    finally:
        for handle in handles:
            handle.remove()
    if per_sample.ndim not in (1, 2) or per_sample.shape[0] != batch:
        raise ValueError(
            f"losses must return ({batch},) or ({batch}, m) values, got {tuple(per_sample.shape)}"
        )
    objectives = 1 if per_sample.ndim == 1 else int(per_sample.shape[1])
    if objectives > 1 and regions > 1:
        raise ValueError("per_sample_gradients: several objectives per sample need regions = 1")
    cells = (regions * regions,) if regions > 1 else (objectives,) if per_sample.ndim == 2 else ()
    shapes = {
        name: (factors[name].out.shape[0], factors[name].inp.shape[0]) if name in factors else p.shape
        for name, p in params.items()
    }
    result = {
        name: torch.zeros((batch, *cells, *shapes[name]), dtype=p.dtype, device=p.device)
        for name, p in params.items()
    }
    if not captured:
        return result
    outputs = [output for _, _, output, _ in captured]
    columns = per_sample.reshape(batch, objectives)
    for j in range(objectives):  # one backward per objective column, through the one forward graph
        grads_out = torch.autograd.grad(
            columns[:, j].sum(), outputs, allow_unused=True, retain_graph=j < objectives - 1
        )
        target = {name: value[:, j] for name, value in result.items()} if per_sample.ndim == 2 else result
        for (path, inputs, _, rows), grad_out in zip(captured, grads_out, strict=True):
            if grad_out is None:
                continue
            if rows % batch:
                raise ValueError(
                    f"engine=batched: module {path!r} sees {rows} rows, not a multiple of the {batch} "
                    "samples; use engine=vmap"
                )
            owner = module.get_submodule(path)
            mine = {attribute: leaves[name] for attribute, name in owners[path]}
            projected = {attribute: factors[name] for attribute, name in owners[path] if name in factors}
            grad_out = grad_out.detach()
            masked = (
                [grad_out]
                if regions == 1
                else [grad_out * m for m in _cell_masks(owner, path, grad_out, regions)]
            )
            if isinstance(inputs, ProjectedInput):
                per_cell = [factored_gradients(owner, mine, inputs, g, batch) for g in masked]
            else:
                per_cell = [
                    _layer_gradients(owner, mine, inputs, g, batch, autocast, projected) for g in masked
                ]
            for attribute, name in owners[path]:
                grad = torch.stack([cell[attribute] for cell in per_cell], dim=1)  # (rows, cells, ...)
                if grad.shape[0] != batch:  # sample-major rows (batch * m, ...): sum each sample's m rows
                    grad = grad.reshape(batch, rows // batch, *grad.shape[1:]).sum(dim=1)
                target[name] += grad.reshape(target[name].shape).to(target[name].dtype)
    return result


def _cell_masks(owner: torch.nn.Module, path: str, grad_out: torch.Tensor, regions: int) -> list:
    """0/1 masks of the regions x regions cells over the last two dims of a channel-first output."""
    from torch import nn

    if not isinstance(owner, (nn.Conv2d, nn.Conv3d, nn.GroupNorm)) or grad_out.ndim < 4:
        raise ValueError(
            f"regions > 1 with region_split=position: module {path!r} ({type(owner).__name__}) has no "
            "channel-first spatial output (Conv2d, Conv3d or GroupNorm over (N, C, ..., H, W)); "
            "select other parameters or use region_split=loss"
        )
    height, width = grad_out.shape[-2:]
    return [mask.to(grad_out.device, grad_out.dtype) for mask in grid_cells(height, width, regions)]


def grid_cells(height: int, width: int, regions: int) -> list[torch.Tensor]:
    """0/1 float masks of a regions x regions grid of near-equal cells, row by row.

    Shape: returns regions^2 tensors of (height, width) that sum to ones.
    """
    import torch

    rows = torch.arange(height) * regions // height
    cols = torch.arange(width) * regions // width
    return [
        ((rows[:, None] == r) & (cols[None, :] == k)).float() for r in range(regions) for k in range(regions)
    ]


def _layer_gradients(
    owner: torch.nn.Module,
    mine: dict[str, torch.Tensor],
    args: tuple,
    grad_out: torch.Tensor,
    batch: int,
    autocast: Callable[[], AbstractContextManager],
    factors: Mapping[str, LayerFactors],
) -> dict[str, torch.Tensor]:
    """Per-row gradients of the owner's parameters ``mine`` (attribute -> tensor) for one call; those in
    ``factors`` (attribute -> factors) projected, P_out dW P_in^T.

    Shape: grad_out (N, ...) with N = batch * m -> attribute -> (N or batch, *shape), or
    (N or batch, k_out, k_in) for an attribute in ``factors``.
    """
    from torch import nn

    from mwga_core.diffusion.factorized import is_plain_conv, is_plain_linear, project_weight_gradient

    grads = None
    if set(mine) <= {"weight", "bias"} and len(args) == 1:
        if is_plain_linear(owner):
            grads = _linear_gradients(args[0], grad_out, mine, batch)
        elif is_plain_conv(owner):
            grads = _conv_gradients(owner, args[0], grad_out, mine)
        elif isinstance(owner, nn.GroupNorm) and owner.affine:
            grads = _group_norm_gradients(owner, args[0], grad_out, mine, autocast)
    if grads is None:
        grads = _module_vjp_gradients(owner, mine, args, grad_out, autocast)
    if not factors:
        return grads
    # a layer the factorized path did not take (its call did not fit it): project the materialised form
    return {a: project_weight_gradient(g, factors[a]) if a in factors else g for a, g in grads.items()}


def _linear_gradients(x: torch.Tensor, grad_out: torch.Tensor, mine: dict, n: int) -> dict[str, torch.Tensor]:
    """Shape: x (N, ..., in), grad_out (N, ..., out), N = n * m -> weight (n, out, in), bias (n, out)."""
    g = grad_out.float().reshape(n, -1, grad_out.shape[-1])
    out = {}
    if "weight" in mine:
        out["weight"] = g.transpose(1, 2).bmm(x.float().reshape(n, -1, x.shape[-1]))
    if "bias" in mine:
        out["bias"] = g.sum(dim=1)
    return out


def _conv_gradients(conv, x: torch.Tensor, grad_out: torch.Tensor, mine: dict) -> dict[str, torch.Tensor]:
    """Shape: x (N, C_in, *S), grad_out (N, C_out, *S') -> weight (N, C_out, C_in, *K), bias (N, C_out)."""
    import torch

    n, c_out, *spatial = grad_out.shape
    g = grad_out.float().reshape(n, c_out, -1)
    out = {}
    if "weight" in mine and all(k == 1 for k in conv.kernel_size[1:]):
        # dW[o, c, k] = sum_s g[o, s] x_pad[c, s * stride + k * dilation]: a kernel along the first dim
        # only makes every window a strided view, so one batched matmul per offset needs no copy.
        pad = [p for size in reversed(conv.padding) for p in (size, size)]
        padded = torch.nn.functional.pad(x.float(), pad)
        weight = torch.empty((n, c_out, conv.in_channels, conv.kernel_size[0]), device=x.device)
        for k in range(conv.kernel_size[0]):
            start = k * conv.dilation[0]
            index = [slice(start, start + conv.stride[0] * (spatial[0] - 1) + 1, conv.stride[0])]
            index += [slice(None, None, s) for s in conv.stride[1:]]
            window = padded[(slice(None), slice(None), *index)].reshape(n, conv.in_channels, -1)
            weight[..., k] = g.bmm(window.transpose(1, 2))
        out["weight"] = weight.reshape(n, *conv.weight.shape)
    elif "weight" in mine:
        # The samples as the groups of one grouped convolution, whose weight gradient is per group.
        grouped_weight = conv.weight.detach().float().repeat(n, *(1,) * (conv.weight.ndim - 1))
        _, weight, _ = torch.ops.aten.convolution_backward(
            grad_out.float().reshape(1, n * c_out, *spatial),
            x.float().reshape(1, n * conv.in_channels, *x.shape[2:]),
            grouped_weight,
            None,
            list(conv.stride),
            list(conv.padding),
            list(conv.dilation),
            False,
            [0] * len(spatial),
            n,
            [False, True, False],
        )
        out["weight"] = weight.reshape(n, *conv.weight.shape)
    if "bias" in mine:
        out["bias"] = g.sum(dim=2)
    return out


def _group_norm_gradients(
    norm, x: torch.Tensor, grad_out: torch.Tensor, mine: dict, autocast: Callable
) -> dict[str, torch.Tensor]:
    """Shape: x (N, C, ...), grad_out (N, C, ...) -> weight (N, C), bias (N, C)."""
    import torch
    from torch.func import functional_call

    n, channels = grad_out.shape[:2]
    g = grad_out.float().reshape(n, channels, -1)
    out = {}
    if "weight" in mine:
        unit = {
            "weight": torch.ones_like(norm.weight, dtype=torch.float32),
            "bias": torch.zeros_like(norm.bias, dtype=torch.float32),
        }
        with torch.no_grad(), autocast():
            x_hat = functional_call(norm, unit, (x,))
        out["weight"] = (g * x_hat.float().reshape(n, channels, -1)).sum(dim=2)
    if "bias" in mine:
        out["bias"] = g.sum(dim=2)
    return out


def _module_vjp_gradients(
    owner: torch.nn.Module,
    mine: dict[str, torch.Tensor],
    args: tuple,
    grad_out: torch.Tensor,
    autocast: Callable[[], AbstractContextManager],
) -> dict[str, torch.Tensor]:
    """Any module: re-run it alone per row and pull ``grad_out`` back to its own parameters."""
    import torch
    from torch.func import functional_call, vjp, vmap

    n = grad_out.shape[0]
    state = list(owner.named_parameters()) + list(owner.named_buffers())
    rest = {name: t.detach() for name, t in state if name not in mine}
    batched = [torch.is_tensor(a) and a.ndim > 0 and a.shape[0] == n for a in args]
    weights = {attribute: p.detach() for attribute, p in mine.items()}

    def one(row_args: list, g: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = tuple(a[None] if b else a for a, b in zip(row_args, batched, strict=True))

        def forward(p: dict) -> torch.Tensor:
            with autocast():
                return functional_call(owner, (p, rest), inputs)

        output, pull_back = vjp(forward, weights)
        return pull_back(g[None].to(output.dtype))[0]

    in_dims = ([0 if b else None for b in batched], 0)
    return vmap(one, in_dims=in_dims)(list(args), grad_out)
