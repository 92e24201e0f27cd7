"""Reports for every example render as text, Markdown, HTML (plots embedded) and JSON."""
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from spattn_dsl import load
from spattn_dsl.analysis import analyze, render
from spattn_dsl.analysis.certificate import SOURCE
from spattn_dsl.analysis.plots import token_label
from spattn_dsl.analysis.render import fmt_number, fmt_percent

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example_models():
    out = []
    for path in sorted(EXAMPLES.glob("*.spattn")):
        names = re.findall(r"^model (\w+)", path.read_text(), re.M)
        out += [pytest.param(path, name, id=f"{path.stem}-{name}") for name in names]
    return out


def example_patterns():
    out = []
    for path in sorted(EXAMPLES.glob("*.spattn")):
        names = re.findall(r"^pattern (\w+)", path.read_text(), re.M)
        out += [pytest.param(path, name, id=f"{path.stem}-{name}") for name in names]
    return out


class Page(HTMLParser):
    """Collects the images, table headers and headings of an HTML page."""

    def __init__(self):
        super().__init__()
        self.images, self.headers, self.headings, self._in = [], [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        self._in = tag

    def handle_data(self, data):
        if self._in == "th":
            self.headers.append(data)
        if self._in in ("h1", "h2"):
            self.headings.append(data)


@pytest.fixture(scope="module")
def reports():
    cache = {}

    def get(path, name):
        if (path, name) not in cache:
            cache[path, name] = analyze(load(path).model(name), 512)
        return cache[path, name]
    return get


@pytest.mark.parametrize("path,name", example_models())
def test_example_model_renders_in_every_format(path, name, reports, tmp_path):
    report = reports(path, name)
    md = render(report, tmp_path / "r.md")
    assert md.startswith(f"# Graph-diameter report: {name}")
    # "rf_min (lower bound)" where a dynamic layer makes it a bound
    assert "| layer | rf_min" in md and (tmp_path / "r.md").read_text() == md
    data = json.loads(render(report, tmp_path / "r.json"))
    assert data == json.loads(report.to_json())
    assert data["diameter"] == ("inf" if report.diameter == float("inf") else report.diameter)
    assert len(data["layers"]) == report.depth
    page = Page()
    page.feed(render(report, tmp_path / "r.html"))
    assert "Summary" in page.headings and "Receptive field per layer" in page.headings
    plain = {h.split(" (")[0] for h in page.headers}  # "coverage (lower bound)" for bounds
    assert {"figure", "value", "layer", "coverage", "density"} <= plain
    assert len(page.images) >= 3 and all(src.startswith("data:image/png;base64,")
                                         for src in page.images)
    assert "causal diameter" in render(report) or "diameter" in render(report)


@pytest.mark.parametrize("path,name", example_patterns())
def test_example_pattern_renders_in_every_format(path, name, tmp_path):
    report = analyze(load(path).pattern(name), 300)
    md = render(report, tmp_path / "r.md")
    assert "## Universal-approximation certificate" in md and "| condition | finding |" in md
    data = json.loads(render(report, tmp_path / "r.json"))
    assert data["certificate"]["certified"] == report.certificate.certified
    assert set(data["formulas"]) == set(report.formulas)
    page = Page()
    page.feed(render(report, tmp_path / "r.html"))
    assert "Universal-approximation certificate" in page.headings
    assert {"condition", "finding"} <= set(page.headers) and len(page.images) >= 3
    text = render(report)
    assert f"certificate ({SOURCE}): {report.certificate.line()}" in text
    _assert_no_scientific_notation(text + md)


def _assert_no_scientific_notation(text):
    numbers = re.findall(r"(?<![\w.])\d+(?:\.\d+)?e[+-]?\d+", text)
    assert not numbers, numbers


def test_large_means_are_plain_numbers():
    report = analyze(load(EXAMPLES / "mistral.spattn").model("mistral_7b"), 131072)
    text = render(report)
    _assert_no_scientific_notation(text)
    mean = report.layers[2].rf_mean
    assert mean > 10000 and fmt_number(mean) == str(round(mean))
    assert fmt_number(101.625) == "101.6" and fmt_number(3.0) == "3"
    assert fmt_percent(1e-9) == "0.0000001%"


def test_token_ticks_read_as_k_and_m():
    assert [token_label(v) for v in (0, 512, 32768, 131072, 1 << 20, 3 << 19)] == \
        ["0", "512", "32K", "128K", "1M", "1.5M"]


def test_growth_plot_colours_formulas_apart_and_above_markers(monkeypatch):
    import matplotlib.axes

    drawn = []
    original = matplotlib.axes.Axes.plot

    def spy(self, *args, **kwargs):
        drawn.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    report = analyze(load(EXAMPLES / "mistral.spattn").pattern("mistral_swa"), 4096 * 4,
                     layers=5)
    from spattn_dsl.analysis import plots
    plots.growth_png(report)
    formulas = [k for k in drawn if k["label"].startswith("formula")]
    markers = [k for k in drawn if not k["label"].startswith("formula")]
    assert len(formulas) == len(report.formula_curves) >= 2
    assert len({k["color"] for k in formulas}) == len(formulas)
    assert not {k["color"] for k in formulas} & {k["color"] for k in markers}
    assert min(k["zorder"] for k in formulas) > max(k["zorder"] for k in markers)


def test_html_without_matplotlib_says_plots_were_skipped(monkeypatch, reports):
    report = reports(EXAMPLES / "mistral.spattn", "mistral_7b")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    html = render(report, fmt="html")
    assert "Plots skipped" in html and "<img" not in html


def test_text_report_names_the_key_figures():
    report = analyze(load(EXAMPLES / "mistral.spattn").pattern("mistral_swa"), 65536)
    text = render(report)
    assert "causal diameter" in text and "coverage depth" in text
    assert "reach = Min(L*(w - 1), n - 1)" in text


def test_inf_is_a_string_in_dicts():
    prefix = load(EXAMPLES / "prefix_lm.spattn").pattern("prefix_lm")
    data = analyze(prefix, 256).to_dict()
    assert data["diameter"] == "inf" and data["coverage_depth"] == "inf"
    assert data["uncovered_pair"] is not None


def test_unknown_format_is_an_error(reports):
    with pytest.raises(ValueError):
        render(reports(EXAMPLES / "mistral.spattn", "mistral_7b"), fmt="pdf")


def test_layer_ticks_are_integers():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spattn_dsl.analysis.plots import layer_ticks
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [5, 6, 7])
    layer_ticks(ax.xaxis)
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
    plt.close(fig)
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)
