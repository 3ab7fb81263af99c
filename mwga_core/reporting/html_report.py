"""report.html: one self-contained page per attribution, run or report folder (no network, no server).

Per query: the query clip looping, its flow as a looping colour-wheel clip, and its top training clips
looping in sync, each with rank, score, label and a bar placing its score in the query's distribution
over all clips (drawn as a histogram above them); MOTIVE's vote subset for several queries; where the
method has spatial structure, a heat map per top clip of each query region's share of the score and
the query's motion mask. Pictures are sprite strips in ``data:`` URIs (:mod:`.html_media`) moved by one
small script, the page's player (its hash is the page's only allowed script: a Content-Security-Policy
allows no other script, no network and no plugin). Every clip id, label and path passes through
:func:`html.escape`.

Built for ``mwga attribute --html`` (:mod:`mwga_core.cli.attribute`), for every ``mwga`` run
(:func:`write_run_report`, called by :func:`mwga_core.reporting.run_outputs.write_run_outputs`: no
gradient is computed again) and for ``mwga report`` (:func:`sweep_report_html`).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mwga_core.reporting import html_media

if TYPE_CHECKING:
    from mwga_core.api.results import AttributionResult

#: clips are drawn this many CSS pixels across (nearest-neighbour enlargement of smaller frames)
SHOWN_PIXELS = 96
#: frames per second of the player
FPS = 8

PLAYER = """(() => {
  const clips = [...document.querySelectorAll('.anim')];
  const button = document.getElementById('play'), scrub = document.getElementById('scrub');
  const shown = document.getElementById('frameno'), longest = Math.max(1, +scrub.max + 1);
  let frame = 0, playing = true, start = performance.now(), first = 0;
  function show(n) {
    frame = n;
    for (const clip of clips) {
      const count = +clip.dataset.frames, i = n % count;
      clip.style.backgroundPosition = (count > 1 ? (100 * i) / (count - 1) : 0) + '% 0';
    }
    scrub.value = String(n % longest);
    shown.textContent = String((n % longest) + 1);
    document.documentElement.dataset.frame = String(n);
  }
  function tick() {
    if (playing) show(first + Math.floor(((performance.now() - start) * FPS) / 1000));
  }
  function play(on) {
    playing = on;
    button.textContent = on ? 'pause' : 'play';
    if (on) { start = performance.now(); first = frame; }
  }
  button.addEventListener('click', () => play(!playing));
  scrub.addEventListener('input', () => { play(false); show(+scrub.value); });
  document.addEventListener('keydown', (event) => {
    if (event.key === ' ') { event.preventDefault(); play(!playing); }
    if (!playing && event.key === 'ArrowRight') show(frame + 1);
    if (!playing && event.key === 'ArrowLeft') show(frame + longest - 1);
  });
  show(0);
  setInterval(tick, 1000 / FPS / 2);
})();""".replace("FPS", str(FPS))

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-top: 1px solid #ccc; padding-top: .6em; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0 1em; margin: 0 0 .8em; }
dl.facts dt { color: #666; } dl.facts dd { margin: 0; font-family: monospace; overflow-wrap: anywhere; }
.controls { position: sticky; top: 0; background: #fff; padding: .4em 0; z-index: 1; }
.row, .grid { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }
figure.clip { margin: 0; width: 132px; font-size: 11px; }
figure.clip.relevant .anim { outline: 3px solid #2a2; }
.anim { image-rendering: pixelated; background-repeat: no-repeat; background-color: #eee; }
.missing { background: #eee; display: flex; align-items: center; justify-content: center; color: #a00; }
figcaption .id { font-family: monospace; overflow-wrap: anywhere; display: block; }
.label { background: #eef; padding: 0 .3em; border-radius: 3px; }
.bar { position: relative; height: 6px; background: #ddd; margin: 3px 0; width: 96px; }
.bar span { position: absolute; left: 0; top: 0; bottom: 0; background: #c00; }
.bar i { position: absolute; top: -2px; bottom: -2px; width: 1px; background: #000; }
table.metrics { border-collapse: collapse; } table.metrics td, table.metrics th { padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: right; }
table.metrics td:first-child, table.metrics th:first-child { text-align: left; }
.wide { overflow-x: auto; }
.note { color: #555; max-width: 60em; } img.figure { max-width: 100%; }
"""


@dataclass
class ShownClip:
    """A training clip under a query. ``key`` names its pictures: a clip under several queries is
    stored once.

    Shape:
        frames: (T, H, W, C) float in [0, 1] or uint8; None when the file can no longer be read.
        regions: (r, r) each query region's contribution to ``score``, or None.
    """

    key: str
    clip_id: str
    score: float
    frames: np.ndarray | None
    label: str = ""
    relevant: bool = False
    regions: np.ndarray | None = None
    votes: int | None = None


@dataclass
class ShownQuery:
    """A query and its top clips (best first).

    Shape:
        frames: (T, H, W, C); flow: (T-1, H, W, 2) or None; scores: (N,) its scores over every clip;
        mask: (T, H, W) in [0, 1] or None.
    """

    query_id: str
    frames: np.ndarray
    flow: np.ndarray | None
    scores: np.ndarray
    top: list[ShownClip]
    label: str = ""
    flow_title: str = "flow"
    mask: np.ndarray | None = None


@dataclass
class ReportPage:
    """Everything one report.html shows. ``sections`` are HTML fragments made by this module's
    helpers (:func:`table_html`, :func:`figure_html`, :func:`note_html`), shown before the queries."""

    title: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    sections: list[tuple[str, str]] = field(default_factory=list)
    queries: list[ShownQuery] = field(default_factory=list)
    selected: list[ShownClip] = field(default_factory=list)
    selected_title: str = ""
    notes: list[str] = field(default_factory=list)


def table_html(headers: list[str], rows: list[list[str]]) -> str:
    """A table of text cells (escaped)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return (
        f'<div class="wide"><table class="metrics"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
        "</table></div>"
    )


def figure_html(png: bytes, alt: str) -> str:
    """A PNG figure inline."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="figure" alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def note_html(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


class _Sprites:
    """The page's pictures, each stored once as a CSS class holding its data URI."""

    def __init__(self) -> None:
        self.rules: list[str] = []
        self.names: dict[str, tuple[str, int, int, int]] = {}

    def add(self, key: str, make) -> tuple[str, int, int, int]:
        """(class, frames, height, width) of the picture ``key``; ``make()`` gives (uri, T, H, W)."""
        if key not in self.names:
            uri, count, height, width = make()[:4]
            name = f"s{len(self.names)}"
            self.rules.append(f".{name}{{background-image:url({uri});background-size:{count * 100}% 100%}}")
            self.names[key] = (name, count, height, width)
        return self.names[key]

    def div(self, key: str, make, tooltip: str) -> str:
        name, count, height, width = self.add(key, make)
        scale = max(1, SHOWN_PIXELS // max(height, width))
        return (
            f'<div class="anim {name}" data-frames="{count}" title="{escape(tooltip)}" '
            f'style="width:{width * scale}px;height:{height * scale}px"></div>'
        )


def _bar(score: float, scores: np.ndarray) -> str:
    """Where ``score`` lies between the lowest and highest score of the query; the tick is the median."""
    low, high = float(scores.min()), float(scores.max())
    span = high - low if high > low else 1.0
    fill, median = (score - low) / span * 100, (float(np.median(scores)) - low) / span * 100
    share = float((scores >= score).mean()) * 100
    return (
        f'<div class="bar" title="score within this query\'s range over all {len(scores)} clips; '
        f'tick: median"><span style="width:{fill:.1f}%"></span><i style="left:{median:.1f}%"></i></div>'
        f"top {share:.3g}% of {len(scores)}"
    )


def _clip_figure(
    sprites: _Sprites, clip: ShownClip, caption: str, scores: np.ndarray | None, scale: float
) -> str:
    if clip.frames is None:
        picture = (
            f'<div class="missing" style="width:{SHOWN_PIXELS}px;height:{SHOWN_PIXELS}px">'
            "file no longer readable</div>"
        )
    else:
        picture = sprites.div("clip:" + clip.key, lambda: html_media.clip_sprite(clip.frames), clip.clip_id)
    label = f' <span class="label">{escape(clip.label)}</span>' if clip.label else ""
    bar = _bar(clip.score, scores) if scores is not None and len(scores) else ""
    regions = "" if clip.regions is None else html_media.region_map_svg(clip.regions, scale)
    relevant = " relevant" if clip.relevant else ""
    return (
        f'<figure class="clip{relevant}">{picture}<figcaption>{caption} score {clip.score:+.4f}{label}'
        f'<span class="id">{escape(clip.clip_id)}</span>{bar}</figcaption>{regions}</figure>'
    )


def _query_section(sprites: _Sprites, number: int, query: ShownQuery) -> str:
    title = f"Query {number}: {query.query_id}" + (f" [{query.label}]" if query.label else "")
    clip = sprites.div(f"query:{number}", lambda: html_media.clip_sprite(query.frames), query.query_id)
    cards = [f'<figure class="clip">{clip}<figcaption>query</figcaption></figure>']
    if query.flow is not None and len(query.flow):
        uri, count, height, width, speed = html_media.flow_sprite(query.flow)
        flow = sprites.div(f"flow:{number}", lambda: (uri, count, height, width), query.flow_title)
        cards.append(
            f'<figure class="clip">{flow}<figcaption>{escape(query.flow_title)}; full colour = '
            f"{speed:.2f} px/frame</figcaption></figure>"
        )
    if query.mask is not None:
        mask = sprites.div(f"mask:{number}", lambda: html_media.mask_sprite(query.mask), "motion mask")
        cards.append(f'<figure class="clip">{mask}<figcaption>MOTIVE motion mask</figcaption></figure>')
    if len(query.scores):
        marks = np.array([c.score for c in query.top])
        cards.append(
            f'<figure class="clip" style="width:auto">{html_media.histogram_svg(query.scores, marks)}'
            f"<figcaption>scores over all {len(query.scores)} clips; red: the top {len(query.top)}"
            "</figcaption></figure>"
        )
    maps = [np.abs(c.regions).max() for c in query.top if c.regions is not None]
    scale = float(max(maps)) if maps else 1.0
    top = [
        _clip_figure(sprites, clip, f"<b>#{rank}</b>", query.scores, scale)
        for rank, clip in enumerate(query.top, start=1)
    ]
    return (
        f'<section class="query"><h2>{escape(title)}</h2><div class="row">{"".join(cards)}</div>'
        f'<h3>top {len(query.top)}</h3><div class="grid">{"".join(top)}</div></section>'
    )


def render_page(page: ReportPage) -> str:
    """The page as one HTML document (see the module docstring)."""
    sprites = _Sprites()
    body = [f"<h1>{escape(page.title)}</h1>"]
    if page.facts:
        facts = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in page.facts)
        body.append(f'<dl class="facts">{facts}</dl>')
    body += [note_html(n) for n in page.notes]
    for title, fragment in page.sections:
        body.append(f"<h2>{escape(title)}</h2>{fragment}")
    body += [_query_section(sprites, i, q) for i, q in enumerate(page.queries, start=1)]
    if page.selected:
        cards = [
            _clip_figure(sprites, clip, f"<b>{clip.votes} votes</b> mean", None, 1.0)
            for clip in page.selected
        ]
        body.append(f'<h2>{escape(page.selected_title)}</h2><div class="grid">{"".join(cards)}</div>')
    longest = max((count for _, count, _, _ in sprites.names.values()), default=1)
    controls = (
        '<div class="controls"><button id="play" type="button">pause</button> frame '
        f'<output id="frameno">1</output>/{longest} <input id="scrub" type="range" min="0" '
        f'max="{longest - 1}" value="0" aria-label="frame"> <small>space: play/pause; arrows step '
        "when paused</small></div>"
    )
    player = f"<script>{PLAYER}</script>" if sprites.names else ""  # no clip, no player
    script_hash = base64.b64encode(hashlib.sha256(PLAYER.encode()).digest()).decode()
    policy = (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{script_hash}'; base-uri 'none'; form-action 'none'"
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
        f"<title>{escape(page.title)}</title><style>{STYLE}{''.join(sprites.rules)}</style></head>"
        f"<body>{controls if sprites.names else ''}{''.join(body)}{player}</body></html>\n"
    )


# -- the run folder -------------------------------------------------------------------------------------

#: queries a run's page shows (the first of each pattern first) and top clips per query
RUN_QUERIES = 6
RUN_TOP = 10


def _run_queries(result: AttributionResult) -> list[int]:
    """Up to :data:`RUN_QUERIES` queries: the first of each pattern, then the rest in order."""
    labels = result.corpus.queries.labels
    firsts = [int(np.flatnonzero(labels == label)[0]) for label in np.unique(labels[labels >= 0])]
    rest = [q for q in range(len(labels)) if q not in firsts]
    return (sorted(firsts) + rest)[:RUN_QUERIES]


def run_page(
    result: AttributionResult, method: str, headers: list[str], rows: list[list[str]], metric_names: list[str]
) -> ReportPage:
    """The page of one ``mwga`` run, from what the run holds in memory: no gradient again."""
    corpus = result.corpus
    names = corpus.class_names
    train, queries = corpus.train, corpus.queries
    page = ReportPage(
        f"mwga run: {method}",
        [("method", method), ("training clips", str(len(train))), ("queries", str(len(queries)))],
    )
    if result.evaluation.per_pattern:
        page.sections.append(("Per pattern (Table 1 layout)", table_html(headers, rows)))
        for title, svg in html_media.pattern_figures(result.evaluation.per_pattern, metric_names):
            page.sections.append((title, svg))
        page.notes.append("Figure 3 compares methods: `mwga report` on a method sweep draws it.")
        page.notes.append("A green outline marks a top clip of the query's own pattern.")
    page.notes.append(
        "Where the match lies (per-region maps, motion masks) needs the queries' gradients again: "
        "`mwga attribute <index> <query> --html` draws them; a run keeps only projected features."
    )
    for q in _run_queries(result):
        label = int(queries.labels[q])
        top = [
            ShownClip(
                key=train.ids[row],
                clip_id=train.ids[row],
                score=float(result.scores[q, row]),
                frames=train.frames[row],
                label=names[train.labels[row]] if train.labels[row] >= 0 else "",
                relevant=label >= 0 and int(train.labels[row]) == label,
            )
            for row in result.rankings[q, :RUN_TOP]
        ]
        flow = queries.gt_flow[q] if queries.gt_flow is not None else None
        page.queries.append(
            ShownQuery(
                queries.ids[q],
                queries.frames[q],
                flow,
                np.asarray(result.scores[q], dtype=np.float64),
                top,
                label=names[label] if label >= 0 else "",
                flow_title="ground-truth flow",
            )
        )
    if queries.gt_flow is None:
        page.notes.append("The run keeps no flow; `mwga attribute --html` shows the estimated flow.")
    if len(queries) > RUN_QUERIES:
        page.notes.append(f"{RUN_QUERIES} of {len(queries)} queries shown (the first of each pattern first).")
    return page


def write_run_report(
    result: AttributionResult,
    method: str,
    output_dir: Path,
    headers: list[str],
    rows: list[list[str]],
    metric_names: list[str],
) -> Path:
    """``report.html`` in a run folder. Returns its path."""
    path = Path(output_dir) / "report.html"
    path.write_text(render_page(run_page(result, method, headers, rows, metric_names)), encoding="utf-8")
    return path


# -- mwga report --------------------------------------------------------------------------------------


def sweep_report_html(
    title: str,
    tables: list[tuple[str, list[str], list[list[str]]]],
    figures: list[Path],
    runs: list[tuple[str, str]],
) -> str:
    """The page of ``mwga report``: its tables, its figures (PNG files, inlined) and links to the run
    pages below it (``runs``: (text, relative link))."""
    page = ReportPage(title)
    for name, headers, rows in tables:
        page.sections.append((name, table_html(headers, rows)))
    for path in figures:
        page.sections.append((path.stem, figure_html(path.read_bytes(), path.stem)))
    if runs:
        links = "".join(f'<li><a href="{escape(link)}">{escape(text)}</a></li>' for text, link in runs)
        page.sections.append(("Run pages (queries and their top clips)", f"<ul>{links}</ul>"))
    return render_page(page)
