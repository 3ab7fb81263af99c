"""Featurization throughput: per-clip diffusion gradients + projection, mwga against traker.

Both sides differentiate the same default ``video_denoiser`` (seeded initial weights: throughput does not
depend on training) on the same clips of the default corpus, with the same objective (eps-prediction
loss, one shared noise draw per timestep; ``--timesteps``, default one; ``--params``, default all) and
project to P dims with a Gaussian map (mwga: ``--projector``, default ``gaussian``; ``sparse_jl`` is the
projector ``method=ours`` uses; ``kronecker`` projects each Linear / Conv weight gradient from its two
factors, k_out x k_in per layer (``--k-out``, ``--k-in``), without forming it, then sparse JL to P).

mwga: the ``diffusion`` gradient source (``--engine`` = ``gradient.engine``: ``batched``, the default,
one batched forward/backward per chunk; ``vmap``, torch.func) with ``chunk_size = --batch``, run as the
pipeline runs it: ``iter_gradients`` yields blocks of 4 chunks and each block is projected by one
``gaussian`` projector call, which streams its matrix from seeds once per call (with ``kronecker``,
``iter_reduced_gradients`` yields the reduced blocks, as the local executor asks for them). traker: TRAK's
``FunctionalGradientComputer`` (vmap over grad) on ``--batch`` clips at a time + ``BasicProjector``
(normal; its whole P x D matrix is generated once, before the clock starts, and kept in memory). With
``--params temporal`` traker still differentiates every parameter (``grad_wrt`` drops the others
afterwards); mwga differentiates only the selected ones. Each side runs in its own subprocess so that its
peak resident memory (ru_maxrss) is its own.

Usage: ``python benches/featurize.py [--clips 128] [--batch 32] [--proj-dim 128] [--device cpu]
[--engine batched|vmap] [--projector gaussian|sparse_jl|kronecker] [--k-out 16] [--k-in 16]
[--params all|temporal] [--timesteps 500 ...] [--bf16] [--repeats 1]``. Prints
one JSON object: the settings; per side the best run's ``clips_per_s``, ``seconds``, ``grad_dim``
(mwga with ``kronecker``: also ``reduced_dim``, the width the final sparse JL sees), the
largest ``peak_rss_mib`` and, with ``--repeats`` > 1, every run's ``clips_per_s_runs`` (the sides run
alternately, so that a change of machine load hits both); mwga also ``engine`` and
``clips_per_projection``; and ``speedup`` (best mwga / best traker clips per second). traker is optional
(``pip install traker``; it installs on torch 2.13).
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

    from mwga_core.api.context import RunContext
    from mwga_core.plugin_host.host import get_host

    host = get_host()
    ctx = RunContext(seed=0, device=args.device, cache_dir=Path(mkdtemp(prefix="mwga-bench-")))
    corpus = host.build("dataset", {"name": "synthetic"}).load(ctx)
    adapter = host.build("model", {"name": "video_denoiser"})
    clip_shape = tuple(int(s) for s in corpus.train.frames.shape[1:])
    torch.manual_seed(0)
    module = adapter.build_fresh(clip_shape, len(corpus.class_names)).to(args.device).eval()
    return host, ctx, corpus, adapter, module, clip_shape


def run_mwga(args) -> dict:
    import numpy as np
    from mwga_plugins.gradients.diffusion import DiffusionGradient, DiffusionGradientConfig

    from mwga_core.api.clips import AnalysedClips
    from mwga_core.api.projectors import factorizes
    from mwga_core.storage.model_store import model_from_module

    host, ctx, corpus, adapter, module, clip_shape = _setup(args)
    source = DiffusionGradient(
        DiffusionGradientConfig(
            name="diffusion",
            weighting="none",
            chunk_size=args.batch,
            timesteps=args.timesteps,
            params=args.params,
            bf16=args.bf16,
            engine=args.engine,
        )
    )
    # the seeded weights, no training
    source.bind_model(model_from_module(adapter, module, clip_shape, len(corpus.class_names)))
    options = {"name": args.projector, "dim": args.proj_dim}
    if args.projector == "kronecker":
        options.update(k_out=args.k_out, k_in=args.k_in)
    projector = host.build("projection", options)
    clips = AnalysedClips(clips=corpus.train.subset(np.arange(args.clips)))

    chosen = set(source.selected_parameter_names(module))
    widths = []

    def featurize(analysed: AnalysedClips) -> list[int]:
        """The local executor's loop (mwga_core.pipeline.featurize): project every chunk the source yields
        (reduced by the layer factors when the projector is factorized)."""
        if factorizes(source, projector):
            chunks = source.iter_reduced_gradients(analysed, ctx, projector)
        else:
            chunks = source.iter_gradients(analysed, ctx)
        sizes = []
        for chunk in chunks:
            projector.project(chunk.grads[0], ctx)
            sizes.append(len(chunk.indices))
            widths.append(int(chunk.grads.shape[-1]))
        return sizes

    featurize(clips.subset(np.arange(args.batch)))  # warm-up
    start = time.perf_counter()
    sizes = featurize(clips)
    seconds = time.perf_counter() - start
    result = {
        "engine": args.engine,
        "clips_per_s": round(args.clips / seconds, 2),
        "seconds": round(seconds, 3),
        "grad_dim": sum(p.numel() for n, p in module.named_parameters() if n in chosen),
        "clips_per_projection": max(sizes),
    }
    if factorizes(source, projector):
        result["reduced_dim"] = widths[-1]
    return result


def run_traker(args) -> dict:
    import torch
    from trak.gradient_computers import FunctionalGradientComputer
    from trak.modelout_functions import AbstractModelOutput
    from trak.projectors import BasicProjector, ProjectionType
    from trak.utils import vectorize

    host, ctx, corpus, adapter, module, clip_shape = _setup(args)
    t, h, w, c = clip_shape
    noise = torch.randn((c, t, h, w), generator=torch.Generator().manual_seed(0)).to(args.device)
    steps = [torch.tensor([s], device=args.device) for s in args.timesteps]

    class DiffusionLoss(AbstractModelOutput):
        def __init__(self) -> None:
            pass

        def get_output(self, model, weights, buffers, x0, label):
            total = 0.0
            for step in steps:
                x_t = adapter.add_noise(x0[None], step, noise[None])
                prediction = torch.func.functional_call(model, (weights, buffers), (x_t, step, label[None]))
                total = total + adapter.per_example_loss(prediction, noise[None]).sum()
            return total / len(steps)

        def get_out_to_loss_grad(self, model, weights, buffers, batch):
            return torch.ones(batch[0].shape[0], 1, device=args.device)

    # traker differentiates every parameter and drops the others afterwards (grad_wrt)
    wrt = None if args.params == "all" else [n for n, _ in module.named_parameters() if "temporal" in n]
    grad_dim = sum(p.numel() for n, p in module.named_parameters() if wrt is None or n in wrt)
    computer = FunctionalGradientComputer(
        module, DiffusionLoss(), grad_dim, torch.float32, torch.device(args.device), grad_wrt=wrt
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
    parser.add_argument("--engine", default="batched", help="mwga side: gradient.engine (batched or vmap)")
    parser.add_argument(
        "--projector",
        default="gaussian",
        help="mwga side: projection (gaussian, like traker's; sparse_jl, method=ours' projector; kronecker)",
    )
    parser.add_argument("--k-out", type=int, default=16, help="mwga side, kronecker: projection.k_out")
    parser.add_argument("--k-in", type=int, default=16, help="mwga side, kronecker: projection.k_in")
    parser.add_argument("--params", default="all", choices=["all", "temporal"], help="gradient.params")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[500], help="gradient.timesteps")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side, alternating; best is reported")
    parser.add_argument("--side", choices=["mwga", "traker"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        result = run_mwga(args) if args.side == "mwga" else run_traker(args)
        result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print(json.dumps(result))
        return
    report = {"clips": args.clips, "batch": args.batch, "proj_dim": args.proj_dim, "device": args.device}
    report["params"], report["timesteps"] = args.params, args.timesteps
    report["mwga_bf16"] = args.bf16
    report["mwga_engine"] = args.engine
    report["mwga_projector"] = args.projector
    if args.projector == "kronecker":
        report["mwga_k_out"], report["mwga_k_in"] = args.k_out, args.k_in
    report["repeats"] = args.repeats
    runs: dict[str, list[dict]] = {"mwga": [], "traker": []}
    for _ in range(args.repeats):  # alternate the sides, so that a change in machine load hits both
        for side in runs:
            command = [sys.executable, __file__, "--side", side] + sys.argv[1:]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                error = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
                runs[side].append({"error": error})
            else:
                runs[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
    for side, results in runs.items():
        ok = [r for r in results if "clips_per_s" in r]
        if not ok:
            report[side] = results[-1]
            continue
        report[side] = dict(max(ok, key=lambda r: r["clips_per_s"]))  # the best run
        report[side]["peak_rss_mib"] = max(r["peak_rss_mib"] for r in ok)
        if args.repeats > 1:
            report[side]["clips_per_s_runs"] = [r["clips_per_s"] for r in ok]
    if "clips_per_s" in report["mwga"] and "clips_per_s" in report["traker"]:
        report["speedup"] = round(report["mwga"]["clips_per_s"] / report["traker"]["clips_per_s"], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
