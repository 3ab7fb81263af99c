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

``--kinds`` may also name ``ours``: the default method's full attribute path (``method=ours``'s scorer,
cosine with ``neighbours=5``) on ``--clusters`` clustered rows (cluster centres plus the Gaussian rows
above as noise, float32, as clip features cluster by motion class):

* index time, timed apart: ``augment_seconds`` (the scorer's ``per_clip`` step, the database-side
  augmentation through the approximate neighbour search, for N >= ``exact_neighbours_below``),
  ``search_index_seconds`` (the ``flat_fp16`` index of the augmented rows) and their RSS growth;
  ``augmented_rows_exact``: the fraction of ``--check-rows`` sampled rows whose augmented row equals the
  exact path's bit for bit, and ``augmented_cosine_to_exact`` (mean);
* with ``--store-dir``: ``store_seconds`` and ``load_seconds`` of the index folder's ``scoring/`` record;
* attribute time: ``single_query_ms`` (one query: its top k from the stored index, rescored in float64,
  as ``mwga attribute`` does), ``batched_query_ms``, ``recall_at_k`` against the exact top k over the
  augmented rows, and ``attribute_call_ms``: one full ``attribute()`` call for one query (the top k plus
  MOTIVE's vote over its top ``ceil(0.1 N)``).

The targets are top-20 per query <= 50 ms on 2 cores (the default method and ``flat_fp16``'s single
query <= 40 ms). Random Gaussian features have no cluster structure,
the worst case for IVF recall; real clip features cluster by motion class. Timings depend on the
machine's load; run it twice and compare.

Usage::

    python benches/retrieval.py [--clips 1000000] [--dim 512] [--k 20] [--threads 2]
        [--kinds flat,flat_fp16,ivf,ivfpq,ours] [--nlist 1024] [--nprobe 16] [--m 64]
        [--clusters 1000] [--check-rows 200] [--store-dir DIR]
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
from pathlib import Path

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


# -- the default method's attribute path ------------------------------------------------------------


def make_clustered(noise: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """Cluster centres (standard normal, one per row's cluster) plus ``noise``, chunk by chunk: rows of a
    cluster have cosine ~0.5 with each other and ~0 with the others.

    Shape: noise (N, P) float16 -> (1, N, P) float32 (K = 1 checkpoint)."""
    rng = np.random.default_rng(seed + 2)
    centres = rng.standard_normal((clusters, noise.shape[1]), dtype=np.float32)
    labels = rng.integers(0, clusters, len(noise))
    rows = np.empty((1, *noise.shape), dtype=np.float32)
    for start in range(0, len(noise), GENERATE_CHUNK_ROWS):
        stop = min(start + GENERATE_CHUNK_ROWS, len(noise))
        rows[0, start:stop] = centres[labels[start:stop]] + noise[start:stop]
    return rows


def exact_augmented_rows(train: np.ndarray, rows: np.ndarray, neighbours: int) -> np.ndarray:
    """The exact path's augmented rows for ``rows`` only: each compared with all N rows in float64,
    chunk by chunk, keeping each chunk's best ``neighbours + 1`` (ties to the lower row, except between
    rows tied at a chunk's cut, which a partition may drop either way).

    Shape: train (N, P) float32, rows (R,) -> (R, P) float64."""
    from mwga_core.api.scorers import unit_rows

    targets = unit_rows(train[rows].astype(np.float64))
    keep = neighbours + 1
    best_ids, best_sims = [], []
    for start in range(0, len(train), GENERATE_CHUNK_ROWS):
        similarity = targets @ unit_rows(train[start : start + GENERATE_CHUNK_ROWS].astype(np.float64)).T
        ids = np.arange(start, start + similarity.shape[1])
        similarity[ids[None, :] == rows[:, None]] = np.inf  # itself first
        top = np.argpartition(-similarity, min(keep, similarity.shape[1]) - 1, axis=1)[:, :keep]
        best_ids.append(ids[top])
        best_sims.append(np.take_along_axis(similarity, top, axis=1))
    ids, sims = np.concatenate(best_ids, axis=1), np.concatenate(best_sims, axis=1)
    order = np.lexsort((ids, -sims), axis=1)[:, :keep]
    nearest = np.take_along_axis(ids, order, axis=1)
    return unit_rows(unit_rows(train[nearest].astype(np.float64)).sum(axis=1))


def exact_top_k(augmented: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The top k rows of each query over all augmented rows, float64, in chunks.

    Shape: augmented (N, P) float64 unit rows, queries (Q, P) -> (Q, k) int64."""
    from mwga_core.api.scorers import unit_rows

    q = unit_rows(queries.astype(np.float64))
    scores = np.concatenate(
        [q @ augmented[s : s + GENERATE_CHUNK_ROWS].T for s in range(0, len(augmented), GENERATE_CHUNK_ROWS)],
        axis=1,
    )
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def measure_default_method(noise: np.ndarray, args: argparse.Namespace) -> dict:
    """The default method's scorer on the index (its whole-index step, timed apart) and its attribute
    path for single and batched queries (module docstring)."""
    from mwga_core.api.context import RunContext
    from mwga_core.config.compose import compose
    from mwga_core.config.schema import as_container
    from mwga_core.plugin_host.host import get_host
    from mwga_core.retrieval.attribute import attribute, search
    from mwga_core.retrieval.prepared_scoring import (
        PreparedScoring,
        build_search_index,
        load_prepared_scoring,
        write_prepared_scoring,
    )

    host = get_host()
    cfg = compose([], host=host)  # the default method
    scorer_config = as_container(cfg)["scorer"]
    scorer = host.build("scorer", scorer_config)
    ctx = RunContext(seed=0)
    train = make_clustered(noise, args.clusters, args.seed)
    queries = make_queries(train[0], args.queries, args.seed)[None]  # (1, Q, P)

    release_freed_memory()
    before = rss_bytes()
    start = time.perf_counter()
    per_clip_scorer, augmented = scorer.per_clip(train, ctx)
    augment_seconds = time.perf_counter() - start
    start = time.perf_counter()
    search_index = build_search_index(per_clip_scorer, augmented)
    search_index_seconds = time.perf_counter() - start
    rss_delta = rss_bytes() - before
    prepared = PreparedScoring(per_clip_scorer, augmented, search_index)

    checked = np.sort(np.random.default_rng(args.seed + 3).choice(args.clips, args.check_rows, replace=False))
    exact_rows = exact_augmented_rows(train[0], checked, scorer_config["neighbours"])
    stored_rows = augmented[0, checked]
    report = {
        "scorer": scorer_config,
        "clusters": args.clusters,
        "augment_seconds": round(augment_seconds, 2),
        "search_index_seconds": round(search_index_seconds, 2),
        "search_index_kind": search_index.kind,
        "index_time_rss_delta_bytes_per_clip": round(rss_delta / args.clips, 1),
        "augmented_rows_exact": float(np.mean(np.all(exact_rows == stored_rows, axis=1))),
        "augmented_cosine_to_exact": round(float(np.mean(np.sum(exact_rows * stored_rows, axis=1))), 6),
    }
    if args.store_dir:
        start = time.perf_counter()
        write_prepared_scoring(Path(args.store_dir), scorer, scorer_config, prepared)
        report["store_seconds"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        prepared = load_prepared_scoring(Path(args.store_dir), scorer, scorer_config, train, host)
        report["load_seconds"] = round(time.perf_counter() - start, 2)

    def one(q: int) -> np.ndarray:
        return search(
            queries[:, q : q + 1], prepared.features, prepared.scorer, ctx, args.k, prepared.search
        )[0][0]

    for q in range(min(args.warmup, args.queries)):
        one(q)
    times, found = [], []
    for q in range(args.queries):
        start = time.perf_counter()
        found.append(one(q))
        times.append(time.perf_counter() - start)
    median, spread = milliseconds(times)
    batches = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        search(queries, prepared.features, prepared.scorer, ctx, args.k, prepared.search)
        batches.append((time.perf_counter() - start) / args.queries)
    exact = exact_top_k(np.asarray(prepared.features[0]), queries[0], args.k)
    calls = []
    for q in range(min(3, args.queries)):
        start = time.perf_counter()
        attribute(queries[:, q : q + 1], train, scorer, ctx, ["q"], args.k, 90.0, 1, prepared=prepared)
        calls.append(time.perf_counter() - start)
    return report | {
        "single_query_ms": median,
        "single_query_ms_min_max": spread,
        "batched_query_ms": round(1000 * statistics.median(batches), 2),
        f"recall_at_{args.k}": float(
            np.mean([len(set(a) & set(b)) / args.k for a, b in zip(found, exact, strict=True)])
        ),
        "attribute_call_ms": milliseconds(calls)[0],
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
    parser.add_argument("--kinds", default="flat,flat_fp16,ivf,ivfpq,ours")
    parser.add_argument("--metric", default="ip")
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--m", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clusters", type=int, default=1000, help="clusters of the rows of kind ours")
    parser.add_argument("--check-rows", type=int, default=200, help="rows checked against the exact path")
    parser.add_argument("--store-dir", default="", help="also store and load the scoring record here")
    args = parser.parse_args()

    import faiss

    faiss.omp_set_num_threads(args.threads)
    start = time.perf_counter()
    features = make_features(args.clips, args.dim, args.seed)
    generate_seconds = time.perf_counter() - start
    queries = make_queries(features, args.queries, args.seed)
    kinds = [kind for kind in args.kinds.split(",") if kind]
    with_method = "ours" in kinds
    kinds = [kind for kind in kinds if kind != "ours"]
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
    if with_method:
        release_freed_memory()
        results["ours"] = measure_default_method(features, args)
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
        "target_ms_per_query": {"ours": 50, "flat_fp16": 40},
        "kinds": results,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
