"""The HTML report reads in a browser (issue 26 item 2): closed forms typeset as MathML, no
raw sympy text, figures at least 800 CSS pixels wide in 2x PNGs, captions that add to the
titles; tile density and waste from the plan the kernels run."""
import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

import spattn_dsl as sp
from spattn_dsl.analysis import analyze, render
from spattn_dsl.analysis.plots import SCALE, png_size
from spattn_dsl.ir.evaluate import head_count
from spattn_dsl.runtime.lowering import case_plans

pytest.importorskip("matplotlib")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class Figures(HTMLParser):
    """Each figure's <img> attributes and its caption."""

    def __init__(self):
        super().__init__()
        self.figures, self._caption = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.figures.append({"img": dict(attrs), "caption": ""})
        if tag == "figcaption":
            self._caption = self.figures[-1]

    def handle_endtag(self, tag):
        if tag == "figcaption":
            self._caption = None

    def handle_data(self, data):
        if self._caption is not None:
            self._caption["caption"] += data


@pytest.fixture(scope="module")
def strided():
    return sp.load(EXAMPLES / "sparse_transformer.spattn").pattern("strided")


@pytest.fixture(scope="module")
def page(strided):
    return render(analyze(strided, 2048), fmt="html")


def test_closed_forms_are_typeset_not_sympy_text(page):
    section = page[page.index("<h2>Closed forms</h2>"):page.index("<h2>Universal")]
    assert section.count('<math display="block">') == 4  # reach, RF, diameter, reach to first
    assert "<mtable" in section  # the Piecewise forms as cases
    for raw in ("Piecewise(", "Max(", "Min(", "floor(", "Mod(", "True"):
        assert raw not in page


def test_figures_are_wide_sharp_pngs_with_captions_that_add(page):
    figures = Figures()
    figures.feed(page)
    assert len(figures.figures) == 3  # mask, growth, coverage
    for figure in figures.figures:
        img = figure["img"]
        png = base64.b64decode(img["src"].removeprefix("data:image/png;base64,"))
        width, height = png_size(png)
        assert int(img["width"]) >= 800 and width == SCALE * int(img["width"]) >= 1600
        assert height == SCALE * int(img["height"])
        caption = figure["caption"]
        assert len(caption) > 2 * len(img["alt"]) and img["alt"] not in caption
    mask = figures.figures[0]["caption"]
    assert "8-token tile" in mask and not re.search(r"\d+x\d+ tiles", page)  # 2048 / 256


def test_markdown_has_latex_and_one_layer_is_singular(strided):
    report = analyze(strided, 256, layers=1)
    md = render(report, fmt="markdown")
    assert "$$\n\\begin{cases}" in md and "Piecewise(" not in md
    assert "1 layer analysed" in md and "1 layers" not in md
    assert "2 layers analysed" in render(analyze(strided, 256, layers=2))


def test_tile_figures_are_those_of_the_kernels_plan(strided):
    n, tile = 4096, 128
    report = analyze(strided, n)
    computed = allowed = 0
    for c, plan in enumerate(case_plans(strided, n, n, tile, tile)):
        computed += plan.pairs_computed
        allowed += int(strided.mask(n, head=c).sum())
    assert head_count(strided.at(n)) == 2
    assert report.waste == pytest.approx(computed / allowed)
    # heads unioned on one token grid (what the report counted before): every tile below
    # the diagonal holds a stride key, about 7x the kernels' work
    union = strided.mask(n, head=0) | strided.mask(n, head=1)
    tiles = union.view(n // tile, tile, n // tile, tile).any(3).any(1)
    assert int(tiles.sum()) * tile * tile / int(union.sum()) > 5 * report.waste
    assert 1 <= report.waste < 2.5 and report.tile_density < 0.2
    assert "tile density (128-token tiles)" in render(report)
