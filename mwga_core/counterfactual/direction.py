"""The sense of each clip's motion, from its exact flow: which way a pan, tilt, slide, rotation or zoom goes.

A class of ``dataset.direction=both`` holds both senses of one motion (left and right pans). Whether a
training clip that moves the *other* way helps the model on a query is a counterfactual question; the
direction probe (``benches/opposite_direction.py``) removes one sense of a class at a time to answer it,
and needs each clip's sense, which the benchmark does not store. It is read from the flow instead.

Each clip's mean flow is summarised by four numbers: mean horizontal and vertical flow, mean curl and mean
divergence about the frame centre. A class's *dominant* summary is the one with the largest mean absolute
value over its clips (translation for a pan, curl for a rotation, divergence for a zoom); a clip's sense is
the sign of its class's dominant summary.
"""

from __future__ import annotations

import numpy as np

#: the four flow summaries, in column order of :func:`flow_summaries`
SUMMARIES = ("horizontal", "vertical", "curl", "divergence")


def flow_summaries(flow: np.ndarray) -> np.ndarray:
    """Mean horizontal flow, vertical flow, curl and divergence of each clip.

    Shape: flow (N, T-1, H, W, 2) with (u, v) in pixels per frame, image y pointing down -> (N, 4) float64.
    Curl and divergence are taken about the frame centre, in pixels per frame (``x v - y u`` and
    ``x u + y v`` over the squared radius, averaged), so they do not grow with the frame size.
    """
    if flow.ndim != 5 or flow.shape[-1] != 2:
        raise ValueError(f"flow must have shape (N, T-1, H, W, 2), got {flow.shape}")
    height, width = flow.shape[2:4]
    y, x = np.meshgrid(
        np.arange(height) - (height - 1) / 2, np.arange(width) - (width - 1) / 2, indexing="ij"
    )
    radius2 = np.maximum(x**2 + y**2, 1.0)
    u, v = flow[..., 0].astype(np.float64), flow[..., 1].astype(np.float64)
    axes = (1, 2, 3)
    return np.stack(
        [
            u.mean(axis=axes),
            v.mean(axis=axes),
            ((x * v - y * u) / radius2).mean(axis=axes),
            ((x * u + y * v) / radius2).mean(axis=axes),
        ],
        axis=1,
    )


def clip_senses(flow: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
    """Each clip's sense (+1 or -1) along its class's dominant flow summary.

    Args:
        flow: (N, T-1, H, W, 2) exact or estimated flow.
        labels: (N,) class of each clip.

    Returns:
        senses (N,) int64 in {-1, +1} (+1 where the summary is exactly 0), and class -> the name of its
        dominant summary (:data:`SUMMARIES`).
    """
    summaries = flow_summaries(flow)
    senses = np.ones(len(labels), dtype=np.int64)
    dominant: dict[int, str] = {}
    for label in np.unique(labels):
        members = labels == label
        column = int(np.argmax(np.abs(summaries[members]).mean(axis=0)))
        dominant[int(label)] = SUMMARIES[column]
        senses[members] = np.where(summaries[members, column] < 0, -1, 1)
    return senses, dominant
