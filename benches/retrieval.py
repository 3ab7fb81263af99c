"""Top-k retrieval speed and memory over a million-clip feature index (mwga_core.retrieval.faiss_index).

Prints one JSON document. The corpus is ``--clips`` rows of ``--dim`` float16 features drawn from a
seeded standard normal in chunks (1M x 512 = 1 GiB); the ``--queries`` queries are randomly chosen
rows plus noise of the same scale, so every query has a true near neighbour. For each index kind:

* ``build_seconds``; ``bytes_per_clip`` (what the index stores per row) and ``rss_delta_bytes_per_clip``
  (resident memory growth while building, divided by N; includes FAISS's temporary buffers);
* ``single_query_ms``: median latency of one query searched alone (after ``--warmup`` queries); the
  flat kinds split the rows into one range per thread for it (``RetrievalIndex.search``);
* ``single_query_unsplit_ms`` (flat kinds): the same with ``threads=1``, one FAISS search over all rows
  (FAISS parallelises over queries, so a lone query scans on one core; ``flat`` may parallelise over rows),
  and ``split_equals_unsplit``: whether both returned the same top-k ids. The two take turns query by
  query, so a change in the machine's load hits both alike;
* ``batched_query_ms``: median over ``--repeats`` of (time to search all queries at once) / queries;
* ``recall_at_k``: mean fraction of the exact (``flat``) top-k found; 1.0 for the exact kinds;
  ``exact_top1_in_topk``: how often the exact best row is among the k found.

The target is top-20 per query <= 50 ms on 2 cores. Random Gaussian features have no cluster structure,
the worst case for IVF recall; real clip features cluster by motion class. Timings depend on the
machine's load; run it twice and compare.

Usage::

    python benches/retrieval.py [--clips 1000000] [--dim 512] [--k 20] [--threads 2]
        [--kinds flat,flat_fp16,ivf,ivfpq] [--nlist 1024] [--nprobe 16] [--m 64]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import statistics
import time

import numpy as np

from mwga_core.retrieval.faiss_index import build_index

GENERATE_CHUNK_ROWS = 65536


def rss_bytes() -> int:
    """The process's resident set size, from /proc (Linux)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS so the next RSS delta starts from a clean base."""
    gc.collect()
    with contextlib.suppress(OSError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def make_features(clips: int, dim: int, seed: int) -> np.ndarray:
    """Seeded standard-normal features, generated chunk by chunk. Shape: (clips, dim) float16."""
    rng = np.random.default_rng(seed)
    features = np.empty((clips, dim), dtype=np.float16)
    for start in range(0, clips, GENERATE_CHUNK_ROWS):
        stop = min(start + GENERATE_CHUNK_ROWS, clips)
        features[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
    return features


def make_queries(features: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Random rows plus same-scale noise. Shape: (count, dim) float32."""
    rng = np.random.default_rng(seed + 1)
    rows = rng.choice(len(features), size=count, replace=False)
    noise = rng.standard_normal((count, features.shape[1]), dtype=np.float32)
    return features[rows].astype(np.float32) + noise


def single_query_times(index, queries: np.ndarray, k: int, warmup: int, thread_options: list) -> dict:
    """Seconds per query searched alone, and the ids found, for each ``threads`` option of
    ``RetrievalIndex.search``; the options take turns on every query (alternating which goes first), so
    the machine's changing load hits each alike. Shape: returns option -> (list of Q, (Q, k) int64)."""
    for query in queries[:warmup]:
        for threads in thread_options:
            index.search(query[None], k, threads=threads)
    times: dict = {threads: [] for threads in thread_options}
    found: dict = {threads: [] for threads in thread_options}
    for number, query in enumerate(queries):
        for threads in thread_options[:: 1 if number % 2 == 0 else -1]:
            start = time.perf_counter()
            _, ids = index.search(query[None], k, threads=threads)
            times[threads].append(time.perf_counter() - start)
            found[threads].append(ids[0])
    return {threads: (times[threads], np.stack(found[threads])) for threads in thread_options}


def milliseconds(seconds: list[float]) -> tuple[float, list[float]]:
    """Median and [min, max] in ms."""
    return round(1000 * statistics.median(seconds), 2), [
        round(1000 * min(seconds), 2),
        round(1000 * max(seconds), 2),
    ]


def measure(index, queries: np.ndarray, k: int, warmup: int, repeats: int) -> dict:
    flat = index.kind in ("flat", "flat_fp16")
    singles = single_query_times(index, queries, k, warmup, [None, 1] if flat else [None])
    median, spread = milliseconds(singles[None][0])
    timing = {"single_query_ms": median, "single_query_ms_min_max": spread}
    if flat:
        unsplit = milliseconds(singles[1][0])
        timing |= {
            "single_query_unsplit_ms": unsplit[0],
            "single_query_unsplit_ms_min_max": unsplit[1],
            "split_equals_unsplit": bool(np.array_equal(singles[None][1], singles[1][1])),
        }
    batches = []
    for _ in range(repeats):
        start = time.perf_counter()
        _, found = index.search(queries, k)
        batches.append((time.perf_counter() - start) / len(queries))
    return {
        **timing,
        "batched_query_ms": round(1000 * statistics.median(batches), 2),
        "found": found,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kinds", default="flat,flat_fp16,ivf,ivfpq")
    parser.add_argument("--metric", default="ip")
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--m", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import faiss

    faiss.omp_set_num_threads(args.threads)
    start = time.perf_counter()
    features = make_features(args.clips, args.dim, args.seed)
    generate_seconds = time.perf_counter() - start
    queries = make_queries(features, args.queries, args.seed)
    kinds = [kind for kind in args.kinds.split(",") if kind]
    if "flat" in kinds:  # the exact answer every other kind's recall is measured against
        kinds.remove("flat")
        kinds.insert(0, "flat")
    results: dict[str, dict] = {}
    exact = None
    for kind in kinds:
        release_freed_memory()
        before = rss_bytes()
        start = time.perf_counter()
        index = build_index(
            features, kind=kind, metric=args.metric, nlist=args.nlist, nprobe=args.nprobe, m=args.m
        )
        build_seconds = time.perf_counter() - start
        rss_delta = rss_bytes() - before
        timing = measure(index, queries, args.k, args.warmup, args.repeats)
        found = timing.pop("found")
        if kind == "flat":
            exact = found
        recall = top1 = None
        if exact is not None:
            pairs = list(zip(found, exact, strict=True))
            recall = float(np.mean([len(set(a) & set(b)) / args.k for a, b in pairs]))
            top1 = float(np.mean([b[0] in set(a) for a, b in pairs]))
        results[kind] = {
            "build_seconds": round(build_seconds, 2),
            "bytes_per_clip": index.bytes_per_clip,
            "rss_delta_bytes_per_clip": round(rss_delta / args.clips, 1),
            **timing,
            f"recall_at_{args.k}": recall,
            f"exact_top1_in_top{args.k}": top1,
            **({"nlist": args.nlist, "nprobe": args.nprobe} if kind in ("ivf", "ivfpq") else {}),
            **({"m": args.m} if kind == "ivfpq" else {}),
        }
        del index
    report = {
        "clips": args.clips,
        "dim": args.dim,
        "k": args.k,
        "queries": args.queries,
        "metric": args.metric,
        "faiss_threads": args.threads,
        "faiss_version": faiss.__version__,
        "generate_seconds": round(generate_seconds, 2),
        "float16_storage_bytes_per_clip": int(features.itemsize * args.dim),
        "target_ms_per_query": 50,
        "kinds": results,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
