"""Train a model adapter's denoiser on a corpus: the training loop and the key of what it makes.

:func:`train_denoiser` fits a freshly built module (:meth:`ModelAdapter.build_fresh`) with AdamW and hands
each saved checkpoint (an exponential moving average of the weights) to a callback; the ``model`` stage
(:mod:`mwga_core.pipeline.model_stage`) writes them to the model store under :func:`training_key`. Everything
random derives from the run seed, so the same inputs give the same checkpoints (on the same machine and
torch build).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from mwga_core.api.clips import ClipSet
from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.api.models import ModelAdapter, ModelCannotTrainError
from mwga_core.diffusion.model_inputs import encode_clips
from mwga_core.storage.keys import clips_fingerprint, entry_key, modules_version, plain

#: bump when the checkpoint layout or the meaning of the training loop changes
TRAINING_FORMAT = 4
#: model config fields that only affect sampling, not the trained weights (left out of the key)
SAMPLING_FIELDS = ("sample_steps", "guidance")

#: save(step, weights): called with the averaged weights at every step of :func:`checkpoint_steps`
SaveCheckpoint = Callable[[int, dict], None]


def training_key(adapter: ModelAdapter, clips: ClipSet, num_classes: int, seed: int) -> str:
    """The model store key of the model :func:`train_denoiser` makes from these inputs.

    It hashes the training clips' content, the seed, the model config without the sampling-only fields
    (:data:`SAMPLING_FIELDS`: changing them reuses the trained model), the source code of the adapter,
    of this trainer and of the project modules they import, and :data:`TRAINING_FORMAT`.
    """
    config = {k: v for k, v in plain(adapter.config).items() if k not in SAMPLING_FIELDS}
    return entry_key(
        "model",
        config=config,
        inputs=[clips_fingerprint(clips)],
        components=[adapter],
        seed=seed,
        format_version=TRAINING_FORMAT,
        extra={
            "adapter": type(adapter).__qualname__,
            "num_classes": int(num_classes),
            "trainer": modules_version(__name__),
        },
    )


def checkpoint_steps(adapter: ModelAdapter) -> list[int]:
    """Sorted distinct steps at which checkpoints are saved; the last training step is always one."""
    tc = adapter.config.training
    return sorted(set(int(s) for s in tc.checkpoints) | {int(tc.steps)})


def check_trainable(adapter: ModelAdapter, clips: ClipSet) -> None:
    """Refuse, before any work, an adapter that cannot train or labels a conditional model lacks."""
    if not adapter.can_train:
        raise ModelCannotTrainError(adapter)
    if adapter.config.conditional and int(clips.labels.max()) < 0:
        raise ConfigValueError(
            "model.conditional",
            True,
            "false: the training clips have no labels to condition on (or give the dataset labels)",
        )


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the base learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_denoiser(
    adapter: ModelAdapter, clips: ClipSet, num_classes: int, ctx: RunContext, save: SaveCheckpoint
) -> dict:
    """Train from scratch, handing every checkpoint to ``save``. Returns the training log.

    The initial weights, the batches, the timesteps and the noise come from seeds derived from the run
    seed, so the same inputs give the same checkpoints (on the same machine and torch build).
    """
    import torch

    check_trainable(adapter, clips)

    tc = adapter.config.training
    device = torch.device(ctx.device)
    clip_shape = tuple(int(s) for s in clips.frames.shape[1:])
    saves = set(checkpoint_steps(adapter))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed_for("model-init"))
        module = adapter.build_fresh(clip_shape, adapter.embedding_classes(num_classes))
    module.to(device).train()
    # Checkpoints store an exponential moving average of the weights: smoother samples and gradients.
    averaged = {name: p.detach().clone() for name, p in module.state_dict().items()}
    live = module.state_dict()
    floats = [name for name, value in live.items() if value.is_floating_point()]
    others = [name for name in live if name not in set(floats)]
    data = encode_clips(adapter, clips.frames, ctx).to(device)
    condition = {name: value.to(device) for name, value in (adapter.condition(clips) or {}).items()}
    labels = torch.as_tensor(clips.labels, dtype=torch.int64, device=device)
    conditional = adapter.config.conditional
    null_label = adapter.null_label(num_classes)
    optimiser = torch.optim.AdamW(module.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    generator = torch.Generator().manual_seed(ctx.seed_for("model-training"))
    num_steps = adapter.schedule.num_steps
    losses: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    with ctx.progress("training model", tc.steps) as bar:
        for step in range(1, tc.steps + 1):
            for group in optimiser.param_groups:
                group["lr"] = tc.lr * _lr_factor(step - 1, tc.steps, tc.warmup)
            batch = torch.randint(0, len(clips), (tc.batch_size,), generator=generator).to(device)
            t = torch.randint(0, num_steps, (tc.batch_size,), generator=generator).to(device)
            noise = torch.randn(data[batch].shape, generator=generator).to(device)
            x_t = adapter.add_noise(data[batch], t, noise)
            batch_labels = labels[batch] if conditional else None
            if null_label is not None:
                dropped = (torch.rand(tc.batch_size, generator=generator) < tc.label_dropout).to(device)
                batch_labels = torch.where(dropped, null_label, batch_labels)
            batch_condition = {name: value[batch] for name, value in condition.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.bf16):
                prediction = module(x_t, t, batch_labels, **batch_condition)
            loss = adapter.training_loss(prediction, adapter.target(data[batch], noise, t), t).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                if tc.ema > 0:
                    torch._foreach_lerp_([averaged[n] for n in floats], [live[n] for n in floats], 1 - tc.ema)
                else:
                    torch._foreach_copy_([averaged[n] for n in floats], [live[n] for n in floats])
                for name in others:
                    averaged[name].copy_(live[name])
            losses.append(float(loss.detach()))
            if step in saves:
                save(step, averaged)
            bar.advance()
    every = max(1, tc.steps // 20)
    return {
        "steps": tc.steps,
        "final_loss": float(np.mean(losses[-every:])),
        "first_loss": float(np.mean(losses[:every])),
        "loss_curve": [round(float(np.mean(losses[i : i + every])), 5) for i in range(0, len(losses), every)],
        "seconds": round(time.perf_counter() - start, 2),
        "cpu_seconds": round(time.process_time() - cpu_start, 2),
        "parameters": int(sum(p.numel() for p in module.parameters())),
        "device": str(device),
    }
