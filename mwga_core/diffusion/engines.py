"""Per-example gradient engines: one gradient row per example, for a subset of a module's parameters.

An engine differentiates a per-example :class:`Objective` (what is differentiated, see
:mod:`mwga_core.diffusion.objectives`) of a batch of examples with respect to
:class:`SelectedParameters` and returns, for every example i,

    G[i] = d objective_i / d theta_selected,  flattened parameter by parameter in the selection's order.

* :class:`VmapEngine`: ``torch.func.vmap(grad(...))`` over ``functional_call``; works for any module.
* :class:`BatchedEngine`: one batched forward and backward per chunk of examples and objective term, each
  example's weight gradient in closed form (:mod:`mwga_core.diffusion.per_sample`). It needs layers that
  keep examples apart; it never back-propagates below the first selected layer and can split each
  weight gradient by output position (``position_cells``).
* :class:`CheckedEngine`: the batched engine, checked once against the vmap engine on two examples.
* :class:`LoopEngine`: one forward and backward per example; any model. :class:`VmapWithFallback` (what
  ``vmap`` means) switches to it when torch.func cannot batch the model.

An objective is a mean of ``num_terms`` terms (e.g. diffusion timesteps): the batched engine
differentiates one term at a time, so only one term's activations are alive at once.

Every engine takes optional layer ``factors`` (parameter name ->
:class:`~mwga_core.api.projectors.LayerFactors`, for weights
:func:`~mwga_core.diffusion.factorized.factor_shape` accepts): those weights' columns then hold
P_out G P_in^T (k_out * k_in columns) instead of G. The batched engine computes it from the projected
factors without forming G (:mod:`mwga_core.diffusion.factorized`); the others form G and project it
(:func:`project_factored_columns`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Protocol

from mwga_core.api.errors import ConfigValueError
from mwga_core.diffusion.per_sample import UnsupportedLayerError

if TYPE_CHECKING:
    import torch

    from mwga_core.api.projectors import LayerFactors

#: parameter name -> its layer's Kronecker factors (see the module docstring)
Factors = Mapping[str, "LayerFactors"]

#: the module with the selected parameters swapped in: forward(x_t, t, labels) -> prediction
Forward = Callable[..., "torch.Tensor"]
#: largest relative difference from the vmap engine the batched engine may show on its first two examples
ENGINE_CHECK_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ExampleBatch:
    """Examples to differentiate, one row each, in model space.

    Shape:
        x0: (n, C, T, H, W) clean clips.
        labels: (n,) int64 classes.
        weight: None, or a per-example loss weight (n, 1, T', H', W') (e.g. the motion mask).
        condition: the denoiser's per-example keyword inputs (e.g. text embeddings (n, L, D)), n rows
            each (:meth:`~mwga_core.api.models.ModelAdapter.condition`); empty for none.
        counterparts: the same clips played backwards (``reversed``) or held still (``still``), encoded
            from their frames, for a model whose encoder does not commute with time reversal
            (:attr:`~mwga_core.api.models.ModelAdapter.time_reversal_commutes`); empty otherwise, and
            contrasts then make them from x0.
        cells: None, or m 0/1 masks (m, T', H', W') of the loss grid, shared by every example: the
            objective is then split into m cell objectives (the loss weight times each mask) and the
            engines return the m cells' gradients side by side, (n, m D), cell by cell
            (:class:`~mwga_core.diffusion.contrasts.LossRegions`).
    """

    x0: torch.Tensor
    labels: torch.Tensor
    weight: torch.Tensor | None = None
    condition: Mapping[str, torch.Tensor] = field(default_factory=dict)
    counterparts: Mapping[str, torch.Tensor] = field(default_factory=dict)
    cells: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.x0.shape[0])

    def rows(self, index: slice) -> ExampleBatch:
        """The examples ``index`` selects (views)."""
        return ExampleBatch(
            self.x0[index],
            self.labels[index],
            None if self.weight is None else self.weight[index],
            {name: value[index] for name, value in self.condition.items()},
            {name: value[index] for name, value in self.counterparts.items()},
            self.cells,
        )

    def cell_weights(self) -> list[torch.Tensor | None]:
        """The loss weight of each cell objective: [weight] without cells, else the weight (ones where
        there is none) times each cell's mask. Shape: m tensors (n, 1, T', H', W')."""
        import torch

        if self.cells is None:
            return [self.weight]
        base = (
            torch.ones((len(self), 1, 1, 1, 1), device=self.x0.device) if self.weight is None else self.weight
        )
        return [base * mask.to(self.x0.device) for mask in self.cells]

    def one_cell(self, j: int) -> ExampleBatch:
        """The batch whose objective is cell ``j``'s alone (no cells; its mask folded into the weight)."""
        return dataclasses.replace(self, weight=self.cell_weights()[j], cells=None)


def split_by_cells(gradients: Callable[[ExampleBatch], torch.Tensor], batch: ExampleBatch) -> torch.Tensor:
    """``gradients`` of each cell objective in turn, side by side: how an engine that cannot share one
    forward pass between the cells serves a batch with :attr:`ExampleBatch.cells`.

    Shape: gradients(batch without cells) -> (n, D); returns (n, m D).
    """
    import torch

    if batch.cells is None:
        return gradients(batch)
    return torch.cat([gradients(batch.one_cell(j)) for j in range(len(batch.cells))], dim=1)


class Objective(Protocol):
    """A per-example objective: the mean over ``num_terms`` terms of a per-example output."""

    num_terms: int

    def __call__(
        self, forward: Forward, batch: ExampleBatch, terms: Sequence[int] | None = None
    ) -> torch.Tensor:
        """The ``terms``' share of the objective (all terms by default). Shape: returns (n,), or (n, m)
        for a batch with m :attr:`~ExampleBatch.cells`."""


@dataclass(frozen=True)
class SelectedParameters:
    """A module split into the parameters to differentiate and everything else (frozen).

    Attributes:
        module: the model.
        names: the selected parameters' names, in the module's order (the gradient's column order).
        params: name -> detached selected parameter.
        frozen: name -> detached other parameter or buffer.
    """

    module: torch.nn.Module
    names: list[str]
    params: dict[str, torch.Tensor]
    frozen: dict[str, torch.Tensor]

    @classmethod
    def of(cls, module: torch.nn.Module, names: Sequence[str]) -> SelectedParameters:
        chosen = set(names)
        params = {n: p.detach() for n, p in module.named_parameters() if n in chosen}
        frozen = {n: p.detach() for n, p in module.named_parameters() if n not in chosen}
        frozen.update(dict(module.named_buffers()))
        return cls(module, list(names), params, frozen)

    def sizes(self, cells: int = 1, factors: Factors | None = None) -> list[int]:
        """Gradient columns per selected parameter (times ``cells`` position cells); k_out * k_in for a
        parameter in ``factors``."""
        factors = factors or {}
        return [
            cells
            * (
                factors[name].out.shape[0] * factors[name].inp.shape[0]
                if name in factors
                else self.params[name].numel()
            )
            for name in self.names
        ]


def project_factored_columns(
    grads: torch.Tensor, selection: SelectedParameters, factors: Factors | None
) -> torch.Tensor:
    """Materialised gradients with each parameter in ``factors`` projected, P_out G P_in^T.

    Shape: grads (n, D) -> (n, D') with D' = ``selection.sizes(1, factors)`` summed.
    """
    import torch

    from mwga_core.diffusion.factorized import project_weight_gradient

    if not factors:
        return grads
    parts = []
    for name, part in zip(selection.names, grads.split(selection.sizes(), dim=1), strict=True):
        if name in factors:
            part = project_weight_gradient(part, factors[name]).reshape(len(grads), -1)
        parts.append(part)
    return torch.cat(parts, dim=1)


@dataclass(frozen=True)
class EngineSettings:
    """What every engine shares.

    Attributes:
        chunk_size: examples per vmap chunk / batched pass (memory vs speed).
        bf16: bfloat16 autocast in the forward pass.
        device_type: ``cpu`` or ``cuda``, for autocast.
    """

    chunk_size: int = 16
    bf16: bool = False
    device_type: str = "cpu"

    def autocast(self) -> AbstractContextManager:
        import torch

        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16)


@dataclass(frozen=True)
class VmapEngine(EngineSettings):
    """``torch.func.vmap(grad(objective))`` per example, ``chunk_size`` examples at a time."""

    def gradients(
        self,
        selection: SelectedParameters,
        objective: Objective,
        batch: ExampleBatch,
        factors: Factors | None = None,
    ) -> torch.Tensor:
        """Shape: returns (n, D) float32, D = the selected parameters' sizes (with ``factors``) summed;
        (n, m D) for a batch with m cells (one cell after another)."""
        import torch
        from torch.func import functional_call, grad, vmap

        if batch.cells is not None:
            return split_by_cells(partial(self.gradients, selection, objective, factors=factors), batch)
        module, frozen = selection.module, selection.frozen

        def one(params: dict, x0: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None, condition):
            def forward(*args, **kwargs):
                with self.autocast():
                    return functional_call(module, (params, frozen), args, kwargs)

            w = None if weight is None else weight[None]
            single = {name: value[None] for name, value in condition.items()}
            return objective(forward, ExampleBatch(x0[None], label[None], w, single)).sum()

        # the condition's tensors are batched along dim 0 like x0; shared inputs stay inside the model
        in_dims = (None, 0, 0, None if batch.weight is None else 0, 0)
        per_example = vmap(grad(one), in_dims=in_dims, chunk_size=self.chunk_size)(
            selection.params, batch.x0, batch.labels, batch.weight, dict(batch.condition)
        )
        grads = torch.cat([per_example[name].reshape(len(batch), -1) for name in selection.names], dim=1)
        return project_factored_columns(grads.detach(), selection, factors)


@dataclass(frozen=True)
class LoopEngine(EngineSettings):
    """One plain forward and backward per example: slow, but works for any model, including those
    ``torch.func.vmap`` cannot batch (e.g. attention with per-example masks it has no batching rule
    for). The reference the other engines are tested against."""

    def gradients(
        self,
        selection: SelectedParameters,
        objective: Objective,
        batch: ExampleBatch,
        factors: Factors | None = None,
    ) -> torch.Tensor:
        """Shape: returns (n, D) float32, D = the selected parameters' sizes (with ``factors``) summed;
        (n, m D) for a batch with m cells (one cell after another)."""
        import torch
        from torch.func import functional_call

        if batch.cells is not None:
            return split_by_cells(partial(self.gradients, selection, objective, factors=factors), batch)
        module, frozen = selection.module, selection.frozen
        leaves = [selection.params[name].detach().requires_grad_(True) for name in selection.names]
        params = dict(zip(selection.names, leaves, strict=True))

        def forward(*args, **kwargs):
            with self.autocast():
                return functional_call(module, (params, frozen), args, kwargs)

        rows = []
        for i in range(len(batch)):
            loss = objective(forward, batch.rows(slice(i, i + 1))).sum()
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            rows.append(
                torch.cat(
                    [
                        (g if g is not None else torch.zeros_like(p)).reshape(-1)
                        for g, p in zip(grads, leaves, strict=True)
                    ]
                )
            )
        return project_factored_columns(torch.stack(rows).float().detach(), selection, factors)


class VmapWithFallback:
    """The vmap engine, falling back to the loop engine (once, with a warning) when torch.func cannot
    vmap the model: an operator without a batching rule, or data-dependent control flow."""

    def __init__(self, vmap_engine: VmapEngine, loop_engine: LoopEngine) -> None:
        self.vmap_engine, self.loop_engine = vmap_engine, loop_engine
        self.use_loop = False

    def gradients(
        self,
        selection: SelectedParameters,
        objective: Objective,
        batch: ExampleBatch,
        factors: Factors | None = None,
    ) -> torch.Tensor:
        """As :meth:`VmapEngine.gradients`."""
        if not self.use_loop:
            try:
                return self.vmap_engine.gradients(selection, objective, batch, factors)
            except RuntimeError as error:  # torch.func's "vmap: ... not supported" and the like
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                warnings.warn(
                    f"gradient.engine=vmap cannot batch {type(selection.module).__name__} ({reason}); "
                    "computing per-example gradients one clip at a time (engine=loop)",
                    stacklevel=2,
                )
                self.use_loop = True
        return self.loop_engine.gradients(selection, objective, batch, factors)


@dataclass(frozen=True)
class BatchedEngine(EngineSettings):
    """One batched forward and backward per (chunk, term) (:func:`~.per_sample.per_sample_gradients`).

    Attributes:
        position_cells: r > 1 splits each weight gradient by where in the layer's output it comes from,
            over an r x r grid of the output's last two dims (Conv/GroupNorm layers): r^2 columns blocks
            per parameter, which sum to its whole gradient.
    """

    position_cells: int = 1

    def gradients(
        self,
        selection: SelectedParameters,
        objective: Objective,
        batch: ExampleBatch,
        factors: Factors | None = None,
    ) -> torch.Tensor:
        """Shape: returns (n, D) float32, D = the selected parameters' sizes (with ``factors``; times
        r^2) summed; (n, m D) for a batch with m cells, from one forward pass per chunk and term shared by
        the cells (one cell after another)."""
        import torch

        from mwga_core.diffusion.per_sample import per_sample_gradients

        sizes = selection.sizes(self.position_cells**2, factors)
        cells = 1 if batch.cells is None else len(batch.cells)
        if cells > 1 and self.position_cells > 1:
            raise ValueError("engine=batched: loss cells and position cells cannot be combined")
        out = torch.zeros((len(batch), cells * sum(sizes)), dtype=torch.float32, device=batch.x0.device)
        for first in range(0, len(batch), self.chunk_size):
            rows = slice(first, first + self.chunk_size)
            chunk = batch.rows(rows)
            for k in range(objective.num_terms):

                def losses(forward: Forward, chunk: ExampleBatch = chunk, k: int = k) -> torch.Tensor:
                    return objective(forward, chunk, terms=[k])

                grads = per_sample_gradients(
                    selection.module,
                    selection.params,
                    selection.frozen,
                    losses,
                    len(chunk),
                    self.autocast,
                    self.position_cells,
                    factors,
                )
                # each chunk's gradients go straight into their rows of the (n, m D) result
                block = out[rows].view(len(chunk), cells, -1)
                for name, column in zip(selection.names, block.split(sizes, dim=2), strict=True):
                    column += grads[name].reshape(column.shape)
        return out


class CheckedEngine:
    """The batched engine, whose first call is checked against the vmap engine on two examples.

    The batched engine relies on the model keeping examples apart (see :mod:`.per_sample`); rather than
    trust that silently, the first call computes two examples both ways in float32 and raises a
    :class:`ConfigValueError` naming ``field`` when they differ by more than ``tolerance`` (relative).
    """

    def __init__(
        self,
        fast: BatchedEngine,
        reference: VmapEngine,
        tolerance: float = ENGINE_CHECK_TOLERANCE,
        field: str = "gradient.engine",
    ) -> None:
        self.fast, self.reference, self.tolerance, self.field = fast, reference, tolerance, field
        self.checked = False
        #: the engine used instead when the batched one cannot handle the model (set by the first call)
        self.instead: VmapWithFallback | None = None

    def gradients(
        self,
        selection: SelectedParameters,
        objective: Objective,
        batch: ExampleBatch,
        factors: Factors | None = None,
    ) -> torch.Tensor:
        """As :meth:`BatchedEngine.gradients` (the check compares the unprojected gradients).

        A model the batched engine cannot differentiate at all (a selected layer that returns no single
        tensor or takes tensor keyword arguments, as transformer blocks do) is handed to the vmap engine
        (falling back to the loop), with a warning; with position cells, which only the batched engine
        makes, that is a :class:`ConfigValueError` instead.
        """
        if self.instead is not None:
            return self.instead.gradients(selection, objective, batch, factors)
        if not self.checked:
            try:
                self._check(selection, objective, batch)
            except UnsupportedLayerError as error:
                if self.fast.position_cells > 1:
                    raise ConfigValueError("gradient.region_split", "position", f"loss: {error}") from None
                warnings.warn(f"{error}; computing per-example gradients with engine=vmap", stacklevel=2)
                plain = {f.name: getattr(self.reference, f.name) for f in dataclasses.fields(self.reference)}
                self.instead = VmapWithFallback(self.reference, LoopEngine(**plain))
                return self.instead.gradients(selection, objective, batch, factors)
            self.checked = True
        return self.fast.gradients(selection, objective, batch, factors)

    def _check(self, selection: SelectedParameters, objective: Objective, batch: ExampleBatch) -> None:
        import torch

        k = min(2, len(batch))
        few = batch.rows(slice(0, k))
        fast = dataclasses.replace(self.fast, bf16=False).gradients(selection, objective, few)
        cells = self.fast.position_cells**2
        if cells > 1:  # the cells of each parameter sum to its whole gradient
            parts = fast.split(selection.sizes(cells), dim=1)
            fast = torch.cat([part.reshape(k, cells, -1).sum(1) for part in parts], 1)
        exact = dataclasses.replace(self.reference, bf16=False).gradients(selection, objective, few)
        error = float(((fast - exact).norm(dim=1) / exact.norm(dim=1).clamp_min(1e-30)).max())
        if error > self.tolerance:
            raise ConfigValueError(
                self.field,
                "batched",
                f"vmap: on this model the batched gradients differ from torch.func's by {error:.2g} "
                "(relative), so some layer mixes samples or takes its batch elsewhere than dim 0",
            )


#: what :func:`make_engine` returns
Engine = VmapEngine | BatchedEngine | CheckedEngine | LoopEngine | VmapWithFallback
#: the names :func:`make_engine` knows
ENGINE_NAMES = ("batched", "vmap", "loop")


def make_engine(name: str, settings: EngineSettings, position_cells: int = 1) -> Engine:
    """The engine called ``name``: ``loop``, ``vmap`` (the loop when vmap cannot batch the model), or
    ``batched`` (checked against vmap on its first call)."""
    plain = dataclasses.asdict(settings)
    if name == "loop":
        return LoopEngine(**plain)
    if name == "vmap":
        return VmapWithFallback(VmapEngine(**plain), LoopEngine(**plain))
    return CheckedEngine(BatchedEngine(**plain, position_cells=position_cells), VmapEngine(**plain))
