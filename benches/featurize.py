"""Featurization throughput: per-clip diffusion gradients + projection, mwga against traker.

Both sides differentiate the same default ``video_denoiser`` (seeded initial weights: throughput does not
depend on training) on the same clips of the default corpus, with the same objective (eps-prediction
loss at one timestep with one shared noise draw, all parameters) and project to P dims with a Gaussian
map. mwga: the ``diffusion`` gradient source + the ``gaussian`` projector. traker: TRAK's
``FunctionalGradientComputer`` (vmap over grad) + ``BasicProjector`` (normal). Each side runs in its own
subprocess so that its peak resident memory (ru_maxrss) is its own.

Usage: ``python benches/featurize.py [--clips 128] [--batch 32] [--proj-dim 128] [--device cpu]``.
Prints one JSON object. traker is optional (``pip install traker``; it installs on torch 2.13).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _setup(args):
    from pathlib import Path
    from tempfile import mkdtemp

    import torch

    from mwga_core.context import RunContext
    from mwga_core.plugin_host import get_host

    host = get_host()
    ctx = RunContext(seed=0, device=args.device, cache_dir=Path(mkdtemp(prefix="mwga-bench-")))
    corpus = host.build("dataset", {"name": "synthetic"}).load(ctx)
    adapter = host.build("model", {"name": "video_denoiser"})
    clip_shape = tuple(int(s) for s in corpus.train.frames.shape[1:])
    torch.manual_seed(0)
    module = adapter.build(clip_shape, len(corpus.class_names)).to(args.device).eval()
    return host, ctx, corpus, adapter, module, clip_shape


def run_mwga(args) -> dict:
    import torch
    from mwga_plugins.gradients.diffusion import DiffusionGradient, DiffusionGradientConfig

    from mwga_core.training import TrainedModel

    host, ctx, corpus, adapter, module, clip_shape = _setup(args)
    source = DiffusionGradient(
        DiffusionGradientConfig(
            name="diffusion", weighting="none", chunk_size=args.batch, timesteps=[500], bf16=args.bf16
        )
    )
    source.bind_model(adapter)
    trained = TrainedModel(adapter, clip_shape, len(corpus.class_names), ctx.cache_dir, [1], {}, False)
    trained.module = lambda step=None, device="cpu": module  # the seeded weights, no training
    source.trained = trained
    projector = host.build("projection", {"name": "gaussian", "dim": args.proj_dim})
    grad_fn = source._per_clip_grad_fn(module, ctx)
    x0 = adapter.encode(corpus.train.frames[: args.clips]).to(args.device)
    labels = torch.as_tensor(corpus.train.labels[: args.clips], dtype=torch.int64, device=args.device)
    projector.project(grad_fn(x0[: args.batch], labels[: args.batch], None), ctx)  # warm-up
    start = time.perf_counter()
    for first in range(0, args.clips, args.batch):
        grads = grad_fn(x0[first : first + args.batch], labels[first : first + args.batch], None)
        projector.project(grads, ctx)
    seconds = time.perf_counter() - start
    return {
        "clips_per_s": round(args.clips / seconds, 2),
        "seconds": round(seconds, 3),
        "grad_dim": int(grads.shape[1]),
    }


def run_traker(args) -> dict:
    import torch
    from trak.gradient_computers import FunctionalGradientComputer
    from trak.modelout_functions import AbstractModelOutput
    from trak.projectors import BasicProjector, ProjectionType
    from trak.utils import vectorize

    host, ctx, corpus, adapter, module, clip_shape = _setup(args)
    t, h, w, c = clip_shape
    noise = torch.randn((c, t, h, w), generator=torch.Generator().manual_seed(0)).to(args.device)
    step = torch.tensor([500], device=args.device)

    class DiffusionLoss(AbstractModelOutput):
        def __init__(self) -> None:
            pass

        def get_output(self, model, weights, buffers, x0, label):
            x_t = adapter.add_noise(x0[None], step, noise[None])
            prediction = torch.func.functional_call(model, (weights, buffers), (x_t, step, label[None]))
            return adapter.per_example_loss(prediction, noise[None]).sum()

        def get_out_to_loss_grad(self, model, weights, buffers, batch):
            return torch.ones(batch[0].shape[0], 1, device=args.device)

    grad_dim = sum(p.numel() for p in module.parameters())
    computer = FunctionalGradientComputer(
        module, DiffusionLoss(), grad_dim, torch.float32, torch.device(args.device)
    )
    projector = BasicProjector(grad_dim, args.proj_dim, 0, ProjectionType.normal, torch.device(args.device))
    x0 = adapter.encode(corpus.train.frames[: args.clips]).to(args.device)
    labels = torch.as_tensor(corpus.train.labels[: args.clips], dtype=torch.int64, device=args.device)

    def featurize(lo: int, hi: int):
        grads = computer.compute_per_sample_grad((x0[lo:hi], labels[lo:hi]))
        return projector.project(vectorize(grads, device=torch.device(args.device)), model_id=0)

    featurize(0, args.batch)  # warm-up
    start = time.perf_counter()
    for first in range(0, args.clips, args.batch):
        featurize(first, first + args.batch)
    seconds = time.perf_counter() - start
    return {
        "clips_per_s": round(args.clips / seconds, 2),
        "seconds": round(seconds, 3),
        "grad_dim": int(grad_dim),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--proj-dim", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="mwga side: bfloat16 autocast (gradient.bf16)")
    parser.add_argument("--side", choices=["mwga", "traker"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        result = run_mwga(args) if args.side == "mwga" else run_traker(args)
        result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print(json.dumps(result))
        return
    report = {"clips": args.clips, "batch": args.batch, "proj_dim": args.proj_dim, "device": args.device}
    report["mwga_bf16"] = args.bf16
    for side in ("mwga", "traker"):
        command = [sys.executable, __file__, "--side", side] + sys.argv[1:]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            report[side] = {
                "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
            }
        else:
            report[side] = json.loads(done.stdout.strip().splitlines()[-1])
    if "clips_per_s" in report.get("mwga", {}) and "clips_per_s" in report.get("traker", {}):
        report["speedup"] = round(report["mwga"]["clips_per_s"] / report["traker"]["clips_per_s"], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
