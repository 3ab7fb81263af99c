"""Train a model adapter's denoiser on a corpus, with checkpoints cached on disk.

:func:`load_or_train` is the entry point. The cache folder is ``<cache_dir>/models/<key>`` where the key
hashes the training clips' content (frames and labels), the run seed, the model config (architecture,
schedule, training hyperparameters) and :data:`CACHE_FORMAT`. The first run trains; later runs with the
same key load the checkpoints. A folder counts as complete only once ``model.json`` exists, and it is
written last; every file is written to a temporary name and renamed, so an interrupted run never leaves a
half-written checkpoint that a later run would load. Checkpoints are safetensors files (never pickle).

Layout of one cache entry::

    models/<key>/step-000400.safetensors   one per saved step (TrainingConfig.checkpoints + the last)
    models/<key>/model.json                config, checkpoint steps, training log (loss curve, seconds)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mwga_core.api.clips import ClipSet
from mwga_core.api.context import RunContext
from mwga_core.api.models import ModelAdapter

if TYPE_CHECKING:
    import torch

#: bump when the checkpoint layout or the training loop changes meaning
CACHE_FORMAT = 3


def config_dict(adapter: ModelAdapter) -> dict[str, Any]:
    """The adapter's config as plain JSON-able data (with the adapter's registered name)."""
    return json.loads(json.dumps(dataclasses.asdict(adapter.config), default=list))


#: model config fields that only affect sampling, not the trained weights (left out of the cache key)
SAMPLING_FIELDS = ("sample_steps", "guidance")


def cache_key(adapter: ModelAdapter, clips: ClipSet, num_classes: int, seed: int) -> str:
    """A 20-hex-digit key of (training data, seed, model + training config, cache format).

    Sampling-only fields (:data:`SAMPLING_FIELDS`) are left out: changing them reuses the trained model.
    """
    digest = hashlib.blake2b(digest_size=10)
    digest.update(np.ascontiguousarray(clips.frames, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(clips.labels, dtype=np.int64).tobytes())
    meta = {
        "format": CACHE_FORMAT,
        "adapter": type(adapter).__qualname__,
        "config": {k: v for k, v in config_dict(adapter).items() if k not in SAMPLING_FIELDS},
        "seed": int(seed),
        "num_classes": int(num_classes),
        "shape": list(clips.frames.shape),
    }
    digest.update(json.dumps(meta, sort_keys=True).encode())
    return digest.hexdigest()


def checkpoint_steps(adapter: ModelAdapter) -> list[int]:
    """Sorted distinct steps at which checkpoints are saved; the last training step is always one."""
    tc = adapter.config.training
    return sorted(set(int(s) for s in tc.checkpoints) | {int(tc.steps)})


@dataclass
class TrainedModel:
    """A trained denoiser's checkpoints on disk.

    Attributes:
        adapter: the model adapter it was built with.
        clip_shape: (T, H, W, C) of the clips it models.
        num_classes: size of the class embedding.
        folder: the cache folder holding ``step-*.safetensors`` and ``model.json``.
        steps: the saved checkpoint steps, ascending.
        info: the contents of ``model.json``.
        loaded_from_cache: False when this call trained it.
    """

    adapter: ModelAdapter
    clip_shape: tuple[int, int, int, int]
    num_classes: int
    folder: Path
    steps: list[int]
    info: dict
    loaded_from_cache: bool

    @property
    def null_label(self) -> int | None:
        """The "no class" label of a model trained with label dropout, else None."""
        return self.adapter.null_label(self.num_classes)

    def checkpoint_path(self, step: int) -> Path:
        return self.folder / f"step-{step:06d}.safetensors"

    def module(self, step: int | None = None, device: str = "cpu") -> torch.nn.Module:
        """The denoiser with the weights of checkpoint ``step`` (default: the last), in eval mode."""
        from safetensors.torch import load_file

        step = self.steps[-1] if step is None else step
        if step not in self.steps:
            raise KeyError(f"no checkpoint at step {step}; saved steps: {self.steps}")
        module = self.adapter.build(self.clip_shape, self.adapter.embedding_classes(self.num_classes))
        module.load_state_dict(load_file(str(self.checkpoint_path(step))))
        return module.to(device).eval()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _save_checkpoint(weights: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in weights.items()}
    _atomic_write_bytes(path, save(state))


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the base learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_denoiser(
    adapter: ModelAdapter, clips: ClipSet, num_classes: int, ctx: RunContext, folder: Path
) -> dict:
    """Train from scratch and write every checkpoint into ``folder``. Returns the training log.

    The initial weights, the batches, the timesteps and the noise come from seeds derived from the run
    seed, so the same inputs give the same checkpoints (on the same machine and torch build).
    """
    import torch

    tc = adapter.config.training
    device = torch.device(ctx.device)
    clip_shape = tuple(int(s) for s in clips.frames.shape[1:])
    saves = set(checkpoint_steps(adapter))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed_for("model-init"))
        module = adapter.build(clip_shape, adapter.embedding_classes(num_classes))
    module.to(device).train()
    # Checkpoints store an exponential moving average of the weights: smoother samples and gradients.
    averaged = {name: p.detach().clone() for name, p in module.state_dict().items()}
    live = module.state_dict()
    floats = [name for name, value in live.items() if value.is_floating_point()]
    others = [name for name in live if name not in set(floats)]
    data = adapter.encode(clips.frames).to(device)
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
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.bf16):
                prediction = module(x_t, t, batch_labels)
            loss = adapter.training_loss(prediction, noise, t).mean()
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
                _save_checkpoint(averaged, folder / f"step-{step:06d}.safetensors")
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


def load_or_train(adapter: ModelAdapter, clips: ClipSet, num_classes: int, ctx: RunContext) -> TrainedModel:
    """The trained model for these clips: from the cache when complete there, else trained and cached."""
    key = cache_key(adapter, clips, num_classes, ctx.seed)
    folder = Path(ctx.cache_dir) / "models" / key
    sidecar = folder / "model.json"
    clip_shape = tuple(int(s) for s in clips.frames.shape[1:])
    steps = checkpoint_steps(adapter)
    if sidecar.exists():
        info = json.loads(sidecar.read_text())
        model = TrainedModel(adapter, clip_shape, num_classes, folder, steps, info, loaded_from_cache=True)
        if all(model.checkpoint_path(s).exists() for s in steps):
            return model
    folder.mkdir(parents=True, exist_ok=True)
    log = train_denoiser(adapter, clips, num_classes, ctx, folder)
    info = {
        "key": key,
        "adapter": config_dict(adapter),
        "num_classes": num_classes,
        "clip_shape": list(clip_shape),
        "num_clips": len(clips),
        "seed": ctx.seed,
        "checkpoint_steps": steps,
        "training": log,
    }
    _atomic_write_bytes(sidecar, (json.dumps(info, indent=2) + "\n").encode())
    ctx.console.print(
        f"[dim]trained {log['parameters']} parameters for {log['steps']} steps in {log['seconds']:.1f} s "
        f"(loss {log['first_loss']:.4f} -> {log['final_loss']:.4f}); cached in {folder}[/dim]"
    )
    return TrainedModel(adapter, clip_shape, num_classes, folder, steps, info, loaded_from_cache=False)
