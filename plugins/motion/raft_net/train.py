"""``mwga train-raft``: fit RAFT on the synthetic benchmark's exact flow, without downloading anything.

Training pairs come from :class:`~mwga_plugins.datasets.synthetic.SyntheticMotionBenchmark`: a pool of
``--clips`` clips generated with ``--seed``, replaced by a fresh pool (seeded from ``--seed`` and the pool
index) each time as many pairs as the pool holds have been drawn, so long runs see new clips. Frames are
upsampled by the same integer factor the ``raft`` estimator uses (x4 for 32x32 clips and large/small, so
the correlation pyramid gets its 128 px; none for tiny, which works at stride 2), and the loss is RAFT's
sequence loss (L1, weights ``gamma^(n - i - 1)``, gamma 0.8) between each iteration's flow, averaged
back to the clip's own resolution exactly as the estimator does, and the ground truth in upsampled
pixels. The learning rate warms up linearly over the first 5% and then decays linearly to 0 over the
run's progress: steps done / ``--steps``, or, when ``--time-limit`` is set and further along, seconds
spent / ``--time-limit`` (so a time-boxed run still ends annealed). The checkpoint is a plain state dict
in the official layout (``module.`` prefix, as ``raft-small.pth``); its variant is recognised from the
tensor shapes. Afterwards the held-out clips (``--eval-seed``, a different seed) are scored by end-point
error for the new checkpoint, loaded back through the estimator, and for Farnebäck, on the same pairs
with the same ``--eval-border`` px left out (as ``mwga flow-eval``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from mwga_plugins.datasets.synthetic import SyntheticConfig, SyntheticMotionBenchmark
from mwga_plugins.motion.raft_net.raft import RAFT, SPECS, VARIANTS

from mwga_core.api.context import RunContext


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mwga train-raft", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="raft-synthetic.pth", help="checkpoint to write (.pth)")
    parser.add_argument(
        "--variant", choices=VARIANTS, default="small", help="tiny: stride 2, for 32x32 clips as they are"
    )
    parser.add_argument("--steps", type=int, default=400, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=6, help="frame pairs per step")
    parser.add_argument(
        "--clips", type=int, default=240, help="training clips per pool (x15 pairs); pools are renewed"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the training clips and the init")
    parser.add_argument("--iterations", type=int, default=6, help="refinement iterations while training")
    parser.add_argument("--lr", type=float, default=4e-4, help="peak learning rate (warm-up, linear decay)")
    parser.add_argument(
        "--min-size", type=int, default=0, help="frames are upsampled to this side (0: the variant's minimum)"
    )
    parser.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=True, help="bfloat16 autocast (CPU AMX)"
    )
    parser.add_argument(
        "--time-limit", type=float, default=0.0, help="stop after this many seconds (0: none)"
    )
    parser.add_argument("--eval-seed", type=int, default=0, help="seed of the held-out clips (0 = mwga's)")
    parser.add_argument("--eval-clips", type=int, default=24, help="held-out clips (0: skip evaluation)")
    parser.add_argument("--eval-pairs", type=int, default=5, help="frame pairs evaluated per held-out clip")
    parser.add_argument("--eval-iterations", type=int, default=12, help="RAFT iterations when evaluating")
    parser.add_argument("--eval-border", type=int, default=4, help="px left out at each edge (as flow-eval)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="torch device for training and evaluation")
    parser.add_argument("--json", default="", help="also write the summary to this JSON file")
    return parser


def make_clips(num_clips: int, seed: int):
    """Benchmark clips and their exact flow. Shape: frames (N, T, H, W, 1), gt_flow (N, T-1, H, W, 2)."""
    ctx = RunContext(seed=seed)
    return SyntheticMotionBenchmark(SyntheticConfig(num_clips=num_clips)).load(ctx).train


def sequence_loss(predictions: list[torch.Tensor], target: torch.Tensor, factor: int, gamma: float = 0.8):
    """RAFT's loss: sum_i gamma^(n-i-1) * mean |pool(pred_i) - target|, at the clip's own resolution.

    Shape: predictions: n x (B, 2, fH, fW) in upsampled px; target (B, 2, H, W) in upsampled px.
    """
    n = len(predictions)
    total = predictions[0].new_zeros(())
    for i, prediction in enumerate(predictions):
        pooled = F.avg_pool2d(prediction.float(), factor) if factor > 1 else prediction.float()
        total = total + gamma ** (n - i - 1) * (pooled - target).abs().mean()
    return total


def learning_rate(peak: float, progress: float, warmup: float = 0.05) -> float:
    """Linear warm-up over the first ``warmup`` of the run, then linear decay to 0 at ``progress`` 1."""
    if progress < warmup:
        return peak * max(progress / warmup, 0.01)
    return peak * max(0.0, 1.0 - progress) / (1.0 - warmup)


def min_side(args: argparse.Namespace) -> int:
    """The side frames are upsampled to: ``--min-size``, or the variant's minimum when 0."""
    return args.min_size or SPECS[args.variant].min_side


def train(args: argparse.Namespace, log=print) -> tuple[RAFT, dict]:
    """Fit a RAFT model; returns it (eval mode) and a summary."""
    ctx = RunContext(seed=args.seed)
    torch.manual_seed(ctx.seed_for("train-raft", "init") % 2**63)
    rng = ctx.rng("train-raft", "batches")
    clips = make_clips(args.clips, args.seed)
    n, t, h, w, _ = clips.frames.shape
    pool_pairs = n * (t - 1)
    factor = max(1, -(-min_side(args) // min(h, w)))

    def tensors(clip_set):
        frames = torch.from_numpy(clip_set.frames[..., 0])  # (N, T, H, W)
        gt = torch.from_numpy(clip_set.gt_flow).permute(0, 1, 4, 2, 3) * factor  # (N, T-1, 2, H, W)
        return frames, gt

    frames, gt = tensors(clips)
    pool = 0

    device = torch.device(args.device)
    model = RAFT(variant=args.variant).to(device)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4, eps=1e-8)
    start = time.perf_counter()
    history = []
    step = 0
    for step in range(1, args.steps + 1):
        drawn_pool = (step - 1) * args.batch_size // pool_pairs
        if drawn_pool != pool:
            pool = drawn_pool
            frames, gt = tensors(make_clips(args.clips, ctx.seed_for("train-raft", "pool", pool) % 2**31))
        elapsed = time.perf_counter() - start
        progress = (step - 1) / args.steps
        if args.time_limit:
            progress = max(progress, elapsed / args.time_limit)
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(args.lr, progress)
        clip = rng.integers(0, n, size=args.batch_size)
        pair = rng.integers(0, t - 1, size=args.batch_size)
        images = torch.stack([frames[clip, pair], frames[clip, pair + 1]], dim=1).to(device)  # (B, 2, H, W)
        if factor > 1:
            images = F.interpolate(images, scale_factor=factor, mode="bilinear", align_corners=False)
        images = images * 255.0
        image1 = images[:, :1].expand(-1, 3, -1, -1)
        image2 = images[:, 1:].expand(-1, 3, -1, -1)
        target = gt[clip, pair].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            predictions = model(image1, image2, iterations=args.iterations)
        loss = sequence_loss(predictions, target, factor)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        with torch.no_grad():
            final = F.avg_pool2d(predictions[-1].float(), factor) if factor > 1 else predictions[-1].float()
            epe = float(torch.linalg.vector_norm(final - target, dim=1).mean()) / factor
        history.append((loss.item(), epe))
        elapsed = time.perf_counter() - start
        if step % 50 == 0 or step == 1:
            recent = np.mean([e for _, e in history[-50:]])
            log(
                f"step {step}/{args.steps}  loss {loss.item():.4f}  train EPE (last 50) {recent:.4f} px  "
                f"lr {optimiser.param_groups[0]['lr']:.2e}  {elapsed:.0f} s"
            )
        if args.time_limit and elapsed > args.time_limit:
            log(f"time limit reached after {step} steps")
            break
    summary = {
        "variant": args.variant,
        "steps": step,
        "batch_size": args.batch_size,
        "train_clips": args.clips,
        "train_seed": args.seed,
        "train_iterations": args.iterations,
        "upsampling": factor,
        "bf16": args.bf16,
        "train_seconds": round(time.perf_counter() - start, 1),
        "peak_lr": args.lr,
        "clip_pools": pool + 1,
        "final_train_epe": round(float(np.mean([e for _, e in history[-50:]])), 4),
    }
    return model.eval(), summary


def save_official(model: RAFT, path: Path) -> None:
    """Write ``model``'s weights as official RAFT checkpoints are: a state dict with ``module.`` keys."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({f"module.{key}": value.detach().cpu() for key, value in model.state_dict().items()}, path)


def evaluate(checkpoint: Path, args: argparse.Namespace) -> dict:
    """End-point error of the checkpoint (through the ``raft`` estimator) and of Farnebäck on held-out
    clips: mean and per pattern, in pixels of the clips' own resolution, ``--eval-border`` px left out."""
    from mwga_plugins.datasets.synthetic import PATTERNS
    from mwga_plugins.motion.farneback import FarnebackConfig, FarnebackFlow
    from mwga_plugins.motion.raft import RaftConfig, RaftFlow

    from mwga_core.evaluation.flow_eval import endpoint_error, interior_mask

    clips = make_clips(args.eval_clips, args.eval_seed)
    n, t = clips.frames.shape[:2]
    chosen = np.unique(np.linspace(0, t - 2, min(args.eval_pairs, t - 1)).round().astype(int))
    first = clips.frames[:, chosen].reshape(-1, *clips.frames.shape[2:])
    second = clips.frames[:, chosen + 1].reshape(-1, *clips.frames.shape[2:])
    gt = clips.gt_flow[:, chosen].reshape(-1, *clips.gt_flow.shape[2:])
    labels = np.repeat(clips.labels, len(chosen))

    raft = RaftFlow(
        RaftConfig(checkpoint=str(checkpoint), iterations=args.eval_iterations, min_size=args.min_size)
    )
    start = time.perf_counter()
    raft_flow = np.concatenate(
        [raft.flow_batch(first[i : i + 8], second[i : i + 8], args.device) for i in range(0, len(first), 8)]
    )
    raft_seconds = time.perf_counter() - start
    farneback = FarnebackFlow(FarnebackConfig())
    fb_flow = np.stack(
        [farneback.estimate_pair(a[..., 0], b[..., 0]) for a, b in zip(first, second, strict=True)]
    )

    result = {
        "eval_seed": args.eval_seed,
        "eval_clips": int(n),
        "pairs": len(first),
        "border": args.eval_border,
        "raft_iterations": args.eval_iterations,
        "raft_seconds": round(raft_seconds, 1),
    }
    inside = interior_mask(*gt.shape[1:3], args.eval_border)
    for name, flow in (("raft", raft_flow), ("farneback", fb_flow)):
        error = endpoint_error(flow, gt)[:, inside].mean(axis=1)
        result[name] = {
            "epe": round(float(error.mean()), 4),
            "per_pattern": {
                PATTERNS[p]: round(float(error[labels == p].mean()), 4) for p in np.unique(labels)
            },
        }
    return result


def main(argv: list[str]) -> int:
    """Entry point of ``mwga train-raft``."""
    from mwga_core.api.errors import ConfigValueError

    args = build_parser().parse_args(argv)
    for name in ("steps", "batch_size", "clips", "iterations", "eval_iterations", "eval_pairs"):
        if getattr(args, name) < 1:
            raise ConfigValueError(f"--{name.replace('_', '-')}", getattr(args, name), "an integer >= 1")
    if args.clips < 6:
        raise ConfigValueError("--clips", args.clips, "an integer >= 6 (one clip per pattern)")
    if args.eval_clips and args.eval_clips < 6:
        raise ConfigValueError("--eval-clips", args.eval_clips, "0 (no evaluation) or an integer >= 6")
    smallest = SPECS[args.variant].min_side
    if args.min_size and args.min_size < smallest:
        raise ConfigValueError(
            "--min-size",
            args.min_size,
            f"0 (the variant's minimum) or an integer >= {smallest} for {args.variant}",
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.eval_clips and args.eval_seed == args.seed:
        raise ConfigValueError(
            "--eval-seed", args.eval_seed, f"a seed other than --seed={args.seed} (held out)"
        )
    log = lambda message: print(message, flush=True)  # noqa: E731
    model, summary = train(args, log)
    out = Path(args.out)
    save_official(model, out)
    summary["checkpoint"] = str(out)
    log(f"wrote {out}")
    if args.eval_clips:
        summary["evaluation"] = evaluate(out, args)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0
