"""report.html without a browser: sprite strips, escaping, size, region maps that add up, the run page.

(tests/core/test_html_report_browser.py opens pages in headless Chromium; `mwga attribute --html` end to
end is in tests/test_attribute_html.py.)
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from dataclasses import dataclass
from html import escape

import numpy as np
import pytest
from mwga_plugins.datasets.synthetic import PATTERNS, SyntheticConfig, render_clip
from mwga_plugins.gradients.simulated import SimulatedGradient, SimulatedGradientConfig
from mwga_plugins.projectors.gaussian import GaussianProjector, GaussianProjectorConfig
from mwga_plugins.scorers.cosine import CosineScorer, CosineScorerConfig
from mwga_plugins.scorers.dot import DotScorer, DotScorerConfig
from PIL import Image

from mwga_core.api.clips import AnalysedClips, ClipSet
from mwga_core.pipeline.featurize import LocalExecutor, featurize
from mwga_core.reporting import html_media
from mwga_core.reporting.html_report import PLAYER, ReportPage, ShownClip, ShownQuery, render_page
from mwga_core.retrieval import regions

EVIL = "<script>alert(1)</script>"


def clip(seed: int, pattern: str = "rotation_cw", size: int = 32, frames: int = 16):
    """A benchmark clip and its exact flow: (T, H, W, 1) float32, (T-1, H, W, 2)."""
    frames, flow = render_clip(
        pattern, np.random.default_rng(seed), SyntheticConfig(num_frames=frames, size=size)
    )
    return frames[..., None], flow


def page_of(queries: int, top: int, size: int = 32, shared: bool = False) -> ReportPage:
    """``queries`` queries with ``top`` clips each (distinct clips, or the same ones when ``shared``)."""
    page = ReportPage("test page", [("index", "/data/index")])
    rng = np.random.default_rng(0)
    for q in range(queries):
        frames, flow = clip(1000 + q, PATTERNS[q % len(PATTERNS)], size)
        shown = []
        for rank in range(top):
            seed = rank if shared else q * top + rank
            shown.append(ShownClip(f"c{seed}", f"clip_{seed}.npy", 1.0 - rank / 10, clip(seed, size=size)[0]))
        page.queries.append(ShownQuery(f"query_{q}.mp4", frames, flow, rng.normal(size=500), shown))
    return page


def decode(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_a_sprite_strip_holds_every_frame_at_the_clips_own_resolution() -> None:
    frames, _ = clip(3)
    uri, count, height, width = html_media.clip_sprite(frames)
    assert (count, height, width) == (16, 32, 32)
    strip = decode(uri)
    assert strip.shape == (32, 16 * 32)  # grey clip: one channel, frames side by side
    expected = np.rint(frames[..., 0] * 255).astype(np.uint8)
    np.testing.assert_array_equal(strip.reshape(32, 16, 32).transpose(1, 0, 2), expected)


def test_large_and_long_clips_are_capped() -> None:
    frames = np.random.default_rng(0).random((80, 300, 200, 3)).astype(np.float32)
    _, count, height, width = html_media.clip_sprite(frames)
    assert count == html_media.MAX_FRAMES and max(height, width) == html_media.MAX_SIDE
    assert (height, width) == (96, 64)


def test_flow_to_the_right_is_red_and_a_still_region_white() -> None:
    flow = np.zeros((2, 8, 8, 2), dtype=np.float32)
    flow[:, :, :4, 0] = 2.0  # left half moves right; right half is still
    uri, _, _, _, speed = html_media.flow_sprite(flow)
    strip = decode(uri)
    assert speed == 2.0
    assert tuple(strip[0, 0]) == (255, 0, 0) and tuple(strip[0, 7]) == (255, 255, 255)


def test_the_page_stores_each_clip_once_and_scales_it_up_with_nearest_neighbour() -> None:
    html = render_page(page_of(queries=2, top=3, shared=True))
    # 2 queries + 2 flows + 3 clips shared by both queries
    assert len(re.findall(r"\.s\d+\{background-image:url\(data:image/png;base64,", html)) == 7
    assert html.count('class="anim ') == 2 + 2 + 2 * 3
    assert "image-rendering: pixelated" in html
    assert html.count('style="width:96px;height:96px"') == 10  # 32 px frames drawn 3x
    assert html.count('data-frames="16"') == 8 and html.count('data-frames="15"') == 2  # flow: T-1


def test_the_page_loads_nothing_from_anywhere_and_allows_only_its_player() -> None:
    html = render_page(page_of(queries=1, top=2))
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?!data:)""", html)
    assert "http://" not in html and "https://" not in html
    digest = base64.b64encode(hashlib.sha256(PLAYER.encode()).digest()).decode()
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert f"script-src 'sha256-{digest}'" in policy and "default-src 'none'" in policy
    assert html.count("<script>") == 1 and f"<script>{PLAYER}</script>" in html


def test_clip_names_labels_and_paths_are_escaped() -> None:
    page = page_of(queries=1, top=2)
    page.title = f"title {EVIL}"
    page.facts.append(("index", f"/data/{EVIL}"))
    page.queries[0].query_id = f'{EVIL}"onmouseover="alert(2)'
    page.queries[0].top[0].clip_id = EVIL
    page.queries[0].top[1].label = "<img src=x onerror=alert(3)>"
    html = render_page(page)
    assert html.count("<script") == 1  # the player, nothing else
    assert "<img src=x" not in html and 'onmouseover="alert' not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(3)&gt;" in html


def test_six_queries_with_their_top_ten_stay_small() -> None:
    html = render_page(page_of(queries=6, top=10))  # 60 distinct clips + 6 queries + 6 flows
    size = len(html.encode())
    print(f"report.html, 6 queries x top 10 at 32x32x16: {size / 1e6:.2f} MB")
    assert size <= 5_000_000


def test_a_page_without_clips_has_no_player() -> None:
    html = render_page(ReportPage("tables only", sections=[("t", "<p>x</p>")]))
    assert "<script>" not in html and 'id="play"' not in html


# -- where the match lies -----------------------------------------------------------------------------


@dataclass
class CellsConfig(SimulatedGradientConfig):
    """The simulated gradient, read as if its columns were (parts, cells, D) loss cells."""

    regions: int = 2
    region_split: str = "loss"
    contrast: str = "none"


class OneCellGradient(SimulatedGradient):
    """Only the columns of cell ``cell`` are non-zero: all of the score must come from that cell."""

    cell = 2

    def iter_gradients(self, clips, ctx):
        for chunk in super().iter_gradients(clips, ctx):
            view = chunk.grads.reshape(*chunk.grads.shape[:2], 4, -1)
            keep = view.clone() * 0
            keep[:, :, self.cell] = view[:, :, self.cell]
            yield type(chunk)(chunk.indices, keep.reshape(chunk.grads.shape))


def analysed(count: int) -> AnalysedClips:
    rng = np.random.default_rng(1)
    clips = ClipSet(
        frames=np.zeros((count, 2, 4, 4, 1), dtype=np.float32),
        labels=np.zeros(count, dtype=np.int64),
        ids=[f"clip_{i}" for i in range(count)],
    )
    return AnalysedClips(clips, descriptors=rng.random((count, 8)).astype(np.float32))


def contributions(gradient, scorer, ctx, queries: int = 3, top: int = 5):
    projector = GaussianProjector(GaussianProjectorConfig(name="gaussian", dim=32))
    clips = analysed(20)
    features = featurize(clips, LocalExecutor(gradient, projector, ctx), ctx)  # (1, 20, 32)
    query_features = features[:, :queries]
    scores = scorer.score(query_features, features, ctx)
    rows = np.argsort(-scores, axis=1)[:, :top]
    top_scores = np.take_along_axis(scores, rows, axis=1)
    layout = regions.region_layout(gradient.config)
    cells = regions.query_region_features(
        gradient, projector, clips.subset(list(range(queries))), layout, ctx
    )
    maps = regions.region_contributions(
        cells, query_features, [features[:, r] for r in rows], top_scores, scorer
    )
    return maps, top_scores


@pytest.mark.parametrize(
    "scorer", [CosineScorer(CosineScorerConfig(name="cosine")), DotScorer(DotScorerConfig(name="dot"))]
)
def test_region_contributions_add_up_to_each_score(scorer, ctx) -> None:
    maps, scores = contributions(SimulatedGradient(CellsConfig(name="cells", virtual_dim=64)), scorer, ctx)
    assert maps.shape == (3, 5, 4)
    np.testing.assert_allclose(maps.sum(axis=-1), scores, rtol=1e-5)
    assert (np.abs(maps).max(axis=-1) > 0.05 * np.abs(scores)).all()  # the cells differ: a real split


def test_a_query_that_moves_in_one_cell_scores_through_that_cell_alone(ctx) -> None:
    scorer = CosineScorer(CosineScorerConfig(name="cosine"))
    maps, scores = contributions(OneCellGradient(CellsConfig(name="cells", virtual_dim=64)), scorer, ctx)
    np.testing.assert_allclose(maps[..., OneCellGradient.cell], scores, rtol=1e-5)
    np.testing.assert_allclose(np.delete(maps, OneCellGradient.cell, axis=-1), 0.0, atol=1e-9)


def test_no_map_is_made_where_there_are_no_cells_or_they_do_not_fit(ctx) -> None:
    assert "no spatial cells" in regions.region_layout(SimulatedGradientConfig(name="simulated"))
    assert "region_split=loss" in regions.region_layout(CellsConfig(name="cells", region_split="position"))
    assert regions.region_layout(CellsConfig(name="cells", contrast="reverse_static")) == (2, 2)
    gradient = SimulatedGradient(CellsConfig(name="cells", virtual_dim=63))
    with pytest.raises(ValueError, match="do not split into 1 x 4 cells"):
        contributions(gradient, CosineScorer(CosineScorerConfig(name="cosine")), ctx)


def test_contributions_that_do_not_add_up_are_refused(ctx) -> None:
    scorer = CosineScorer(CosineScorerConfig(name="cosine"))
    cells = np.random.default_rng(0).normal(size=(4, 1, 2, 8))
    query = cells.sum(axis=0)
    train = [np.random.default_rng(q).normal(size=(1, 3, 8)) for q in range(2)]
    scores = np.ones((2, 3))  # not the cosines
    assert "do not add up to the scores" in regions.region_contributions(cells, query, train, scores, scorer)
    assert "do not add up to the query" in regions.region_contributions(
        cells, query + 1, train, scores, scorer
    )


# -- the run folder -----------------------------------------------------------------------------------


def test_a_run_writes_its_page_beside_its_other_files(compose_config, ctx, tmp_path) -> None:
    from mwga_core.pipeline.run import run_attribution
    from mwga_core.reporting.run_outputs import write_run_outputs

    cfg = compose_config("method=ours_simulated", "dataset.num_clips=36")
    result = run_attribution(cfg, ctx)
    out = tmp_path / "run"
    write_run_outputs(result, cfg, out, cfg.eval.names())
    names = ["metrics.csv", "rankings.csv", "report.html", "results.json", "table.md"]
    assert sorted(p.name for p in out.iterdir()) == names  # report.html is the only new file
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Per pattern (Table 1 layout)" in html and "Figure 1" in html and "Figure 2" in html
    assert html.count('<section class="query">') == 6 and html.count("<figcaption>ground-truth flow;") == 6
    corpus = result.corpus
    for q, query_id in enumerate(corpus.queries.ids):
        assert escape(query_id) in html
        for row in result.rankings[q, :10]:
            assert f'<span class="id">{escape(corpus.train.ids[row])}</span>' in html
    assert html.count('<figure class="clip relevant">') == sum(
        int(corpus.train.labels[r] == corpus.queries.labels[q])
        for q in range(6)
        for r in result.rankings[q, :10]
    )
