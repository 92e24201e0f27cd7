"""A Report as terminal text, Markdown, self-contained HTML (plots embedded) or JSON.

``render(report, path=None, fmt=None)`` picks the format from ``fmt`` ('text', 'markdown',
'html', 'json') or from the path's extension (.md, .html, .json; anything else: text),
writes the file when a path is given, and returns the text. Plots need matplotlib (the
``report`` extra); without it the HTML says that plots were skipped.
"""
from __future__ import annotations

import base64
import html as html_escape
import math
from pathlib import Path

from .certificate import SOURCE

FORMATS = {".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html",
           ".json": "json", ".txt": "text"}
TEXT_LAYER_ROWS = 12


def render(report, path=None, fmt: str | None = None) -> str:
    """The report in one format (see the module docstring); written to ``path`` if given."""
    if fmt is None:
        fmt = FORMATS.get(Path(path).suffix.lower(), "text") if path else "text"
    renderers = {"text": text, "markdown": markdown, "md": markdown, "html": to_html,
                 "json": lambda r: r.to_json()}
    if fmt not in renderers:
        raise ValueError(f"unknown report format {fmt!r}: use text, markdown, html or json")
    out = renderers[fmt](report)
    if path is not None:
        Path(path).write_text(out, encoding="utf-8")
    return out


# ---------------------------------------------------------------- shared pieces
def fmt_number(value) -> str:
    """Integers as they are; other floats to 4 significant digits, never in scientific
    notation (a mean receptive field of 11710.5 reads as 11710.5, not 1.171e+04)."""
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, float):
        return _decimal(value, 4)
    return str(value)


def _decimal(value: float, digits: int) -> str:
    """``digits`` significant digits (more where the integer part is longer), fixed point."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    places = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:.{places}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def fmt_percent(value) -> str:
    """Three significant digits, but an incomplete coverage never reads as 100%."""
    if value is None:
        return "-"
    text = _decimal(100 * value, 3) + "%"
    return "<100%" if text == "100%" and value < 1 else text


def summary_rows(report) -> list:
    """(label, value) pairs: the headline figures."""
    mark = lambda name: bound_label(report, name)  # noqa: E731
    kind = "causal diameter" if report.causal else "diameter"
    rows = [
        (kind + mark("diameter"), fmt_number(report.diameter)),
        ("reach to first token" + mark("reach_to_first"), fmt_number(report.reach_to_first)),
        ("coverage depth" + mark("coverage_depth"), fmt_number(report.coverage_depth)),
        (f"coverage at depth {report.depth}" + mark("coverage"), fmt_percent(report.coverage)),
        ("density" + mark("density"), fmt_percent(report.density)),
        ("admissible density" + mark("admissible_density"),
         fmt_percent(report.admissible_density)),
        ("mean keys per query" + mark("keys_per_query"), fmt_number(report.keys_per_query)),
        ("max keys per query (one head, worst case)" + mark("max_keys_per_query"),
         fmt_number(report.max_keys_per_query)),
        (f"tile density ({tile_text(report.tile)})" + mark("tile_density"),
         fmt_percent(report.tile_density)),
        ("waste (pairs computed / allowed)", fmt_number(report.waste)),
    ]
    if report.layers:
        rows.insert(3, ("theoretical attention span (largest reach)" + mark("reach"),
                        fmt_number(max(x.reach for x in report.layers))))
    if report.uncovered_pair is not None:
        rows.append(("uncovered pair", uncovered_text(report)))
    if report.certificate is not None:
        rows.append((CERTIFICATE_LABEL, report.certificate.line()))
    return rows


def bound_label(report, name: str) -> str:
    """" (upper bound)" / " (lower bound)" for a figure that is a bound, else ""."""
    side = report.bounds.get(name)
    return f" ({side} bound)" if side else ""


CERTIFICATE_LABEL = "universal approximation (Yun et al. 2020)"


def uncovered_text(report) -> str:
    """"never" only where the coverage depth is exactly inf; else within the analysed depth."""
    q, k = report.uncovered_pair
    never = report.coverage_depth == math.inf and "coverage_depth" not in report.bounds
    return f"query {q} never sees key {k}" if never else \
        f"query {q} does not see key {k} within {plural(report.depth, 'layer')}"


def layer_columns(report) -> tuple:
    """The layer table's headers, a figure that is a bound marked as one."""
    return tuple(c + bound_label(report, c) for c in LAYER_COLUMNS)


def pattern_columns(report) -> tuple:
    names = dict(zip(PATTERN_COLUMNS[3:6], ("density", "admissible_density", "keys_per_query")))
    names["max keys/query"] = "max_keys_per_query"
    names["tile density"] = "tile_density"
    return tuple(c + bound_label(report, names[c]) if c in names else c
                 for c in PATTERN_COLUMNS)


def certificate_rows(report) -> list:
    """(condition, finding) pairs of the certificate; empty without one."""
    return report.certificate.conditions() if report.certificate is not None else []


def formula_rows(report) -> list:
    return [(name, str(expr), fmt_number(report.formula_values.get(name)))
            for name, expr in report.formulas.items()]


def conditions_text(report) -> str:
    return "the closed forms hold where " + " and ".join(report.formula_conditions)


def header(report) -> str:
    exact = "exact" if report.exact else "bounds where marked"
    return (f"{report.kind} {report.name}, n = {report.n}, {plural(report.depth, 'layer')} "
            f"analysed, method {report.method} ({exact})")


def plural(count: int, noun: str) -> str:
    """"1 layer", "2 layers"."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def tile_text(tile) -> str:
    """"128-token tiles" (square), "tiles of 128 queries x 64 keys" otherwise."""
    bm, bn = tile
    return f"{bm}-token tiles" if bm == bn else f"tiles of {bm} queries x {bn} keys"


LAYER_COLUMNS = ("layer", "rf_min", "rf_mean", "rf_max", "rf_last", "reach", "span",
                 "coverage")


def layer_cells(record) -> list:
    return [fmt_percent(record.coverage) if name == "coverage" else
            fmt_number(getattr(record, name)) for name in LAYER_COLUMNS]


def pattern_cells(p) -> list:
    return [p.name, p.text, str(p.layers), fmt_percent(p.density),
            fmt_percent(p.admissible_density), fmt_number(p.keys_per_query),
            fmt_number(p.max_keys_per_query), fmt_percent(p.tile_density),
            fmt_number(p.waste)]


PATTERN_COLUMNS = ("pattern", "text", "layers", "density", "admissible density",
                   "keys/query", "max keys/query", "tile density", "waste")


# ---------------------------------------------------------------- text
def text(report) -> str:
    lines = [header(report), ""]
    width = max(len(label) for label, _ in summary_rows(report))
    lines += [f"  {label:<{width}}  {value}" for label, value in summary_rows(report)]
    if report.formulas:
        lines += ["", "closed forms:"]
        lines += [f"  {name} = {expr}   [{value}]" for name, expr, value in formula_rows(report)]
        if report.formula_conditions:
            lines.append(f"  ({conditions_text(report)})")
    if report.certificate is not None:
        lines += ["", f"certificate ({SOURCE}): {report.certificate.line()}"]
        lines += [f"  {condition}: {finding}" for condition, finding in certificate_rows(report)]
    lines += ["", _text_table(layer_columns(report), _shown_layers(report))]
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def _shown_layers(report):
    records = report.layers
    if len(records) <= TEXT_LAYER_ROWS:
        return [layer_cells(r) for r in records]
    head = [layer_cells(r) for r in records[: TEXT_LAYER_ROWS - 2]]
    return head + [["..."] * len(LAYER_COLUMNS), layer_cells(records[-1])]


def _text_table(columns, rows) -> str:
    widths = [max(len(str(c)), *(len(r[i]) for r in rows)) if rows else len(str(c))
              for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa
    return "\n".join([line(columns)] + [line(r) for r in rows])


# ---------------------------------------------------------------- typeset formulas
FORMULA_NAMES = {"reach": "largest reach", "receptive_field_last": "receptive field of the "
                 "last token", "span_middle": "span of the middle token",
                 "diameter": "diameter", "reach_to_first": "reach to first token"}


def formula_name(report, name: str) -> str:
    """A closed form's figure in words ("diameter" is the causal diameter where it is)."""
    words = FORMULA_NAMES.get(name, name.replace("_", " "))
    return "causal diameter" if name == "diameter" and report.causal else words


def formula_values_text(report) -> str:
    return f"value at n = {report.n}, L = {report.depth}"


def formulas_intro(report) -> str:
    """What the closed forms are in, and of what (a dynamic pattern's: its static part)."""
    of = " They are the static part's (dynamic terms as none), so they bound every " \
        "selection as the figures of the same name do." if any(p.dynamic for p in report.patterns) \
        else ""
    return "In the sequence length n, the depth L and the pattern's parameters." + of


def formula_latex(expr) -> str:
    """LaTeX of a closed form (sympy's, cases written "if ...")."""
    import sympy

    return sympy.latex(expr).replace(r"\text{for}\:", r"\text{if}\:")


def formula_mathml(expr) -> str:
    """Presentation MathML of a closed form, ``<math display="block">`` (browsers draw it
    without a script or a network). Piecewise forms as cases, ``Mod`` as "a mod b"."""
    body = _mathml_printer().doprint(expr).replace("<mo>-</mo>", "<mo>&#x2212;</mo>")
    return f'<math display="block">{body}</math>'


_PRINTER = []


def _mathml_printer():
    if _PRINTER:
        return _PRINTER[0]
    from sympy.printing.mathml import MathMLPresentationPrinter

    class Printer(MathMLPresentationPrinter):
        def _element(self, tag, text=None, *children, **attributes):
            node = self.dom.createElement(tag)
            if text is not None:
                node.appendChild(self.dom.createTextNode(text))
            for child in children:
                node.appendChild(child)
            for key, value in attributes.items():
                node.setAttribute(key, value)
            return node

        def _print_Piecewise(self, expr):
            rows = []
            for value, condition in expr.args:
                if condition is True or str(condition) == "True":
                    when = self._element("mtext", "otherwise")
                else:
                    when = self._element("mrow", None, self._element("mtext", "if\u2002"),
                                         self._print(condition))
                rows.append(self._element("mtr", None, self._element("mtd", None,
                                                                     self._print(value)),
                                          self._element("mtd", None, when)))
            table = self._element("mtable", None, *rows, columnalign="left left",
                                  columnspacing="1.2em")
            # a brace as tall as its rows without a math font (which most systems lack: a
            # stretchy "{" would stay one line high)
            brace = self._element("mo", "{", stretchy="false", lspace="0", rspace="0.3em",
                                  style=f"font-size:{1.3 * len(rows):.2f}em")
            return self._element("mrow", None, brace, table)

        def _print_Mod(self, expr):
            a, b = (self._print(x) for x in expr.args)
            if expr.args[0].is_Add:
                a = self._element("mrow", None, self._element("mo", "("), a,
                                  self._element("mo", ")"))
            return self._element("mrow", None, a, self._element("mo", "mod"), b)

    _PRINTER.append(Printer({}))
    return _PRINTER[0]


# ---------------------------------------------------------------- markdown
def _md_table(columns, rows) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out)


def markdown(report) -> str:
    parts = [f"# Graph-diameter report: {report.name}", "", header(report) + ".", "",
             "## Summary", "", _md_table(("figure", "value"), summary_rows(report))]
    if report.formulas:
        parts += ["", "## Closed forms", "",
                  formulas_intro(report).replace(" n,", " $n$,").replace(" L ", " $L$ ")
                  + f" In brackets: the {formula_values_text(report)}."]
        for name, expr in report.formulas.items():
            value = fmt_number(report.formula_values.get(name))
            parts += ["", f"**{formula_name(report, name)}** (`{name}`) [{value}]:", "",
                      "$$", f"{formula_latex(expr)}", "$$"]
        if report.formula_conditions:
            parts += ["", conditions_text(report).capitalize() + "."]
    if report.certificate is not None:
        parts += ["", "## Universal-approximation certificate", "",
                  f"{SOURCE}: {report.certificate.line()}.", "",
                  _md_table(("condition", "finding"), certificate_rows(report))]
    rows = [[f"`{c}`" if i == 1 else c for i, c in enumerate(pattern_cells(p))]
            for p in report.patterns]
    parts += ["", "## Patterns", "", _md_table(pattern_columns(report), rows)]
    parts += ["", "## Receptive field per layer", "",
              _md_table(layer_columns(report), [layer_cells(r) for r in report.layers])]
    if report.notes:
        parts += ["", "## Notes", ""] + [f"- {note}" for note in report.notes]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- html
_STYLE = """body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}h1{font-size:1.7em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;
text-align:right;vertical-align:middle}th{background:#f3f3f3}td:first-child,th:first-child,
td.text,th.text{text-align:left}td.formula{text-align:left;padding:.2em 1em}
math{font-family:"STIX Two Math","Cambria Math","Latin Modern Math","DejaVu Math TeX Gyre",
math,serif}td.formula math{font-size:1.2em;margin:.25em 0;display:inline math}
td.formula mtd{text-align:left;padding:.1em .4em}th.formula{text-align:left}
figure{margin:1.5em 0}figure img{display:block;max-width:100%;height:auto}
figcaption{color:#444;margin-top:.4em;max-width:56em}code{background:#f6f6f6;padding:0 .2em}
p.meta{color:#444}"""


def _html_table(columns, rows, classes=None) -> str:
    """``rows`` of text (escaped) or ``Markup`` (inserted as it is); ``classes``: column
    index -> class of its cells."""
    classes = classes or {}
    esc = html_escape.escape

    def cell(tag, i, value):
        text = value.html if isinstance(value, Markup) else esc(str(value))
        kind = f" class='{classes[i]}'" if i in classes else ""
        return f"<{tag}{kind}>{text}</{tag}>"
    head = "".join(cell("th", i, c) for i, c in enumerate(columns))
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Markup:
    """HTML to insert as it is."""

    def __init__(self, html: str):
        self.html = html


def to_html(report) -> str:
    esc = html_escape.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>spattn report: {esc(report.name)}</title><style>{_STYLE}</style></head>"
             f"<body><h1>Graph-diameter report: {esc(report.name)}</h1>",
             f"<p class='meta'>{esc(header(report))}.</p>", "<h2>Summary</h2>",
             _html_table(("figure", "value"), summary_rows(report))]
    if report.formulas:
        rows = [(formula_name(report, name), Markup(formula_mathml(expr)),
                 fmt_number(report.formula_values.get(name)))
                for name, expr in report.formulas.items()]
        parts += ["<h2>Closed forms</h2>",
                  "<p>" + esc(formulas_intro(report)).replace(" n,", " <var>n</var>,")
                  .replace(" L ", " <var>L</var> ") + "</p>",
                  _html_table(("figure", "closed form", formula_values_text(report)), rows,
                              {1: "formula"})]
        if report.formula_conditions:
            parts.append(f"<p>{esc(conditions_text(report).capitalize())}.</p>")
    if report.certificate is not None:
        parts += ["<h2>Universal-approximation certificate</h2>",
                  f"<p>{esc(SOURCE)}: {esc(report.certificate.line())}.</p>",
                  _html_table(("condition", "finding"), certificate_rows(report), {1: "text"})]
    parts += ["<h2>Figures</h2>", _figures_html(report)]
    rows = [[Markup(f"<code>{esc(c)}</code>") if i == 1 else c
             for i, c in enumerate(pattern_cells(p))] for p in report.patterns]
    parts += ["<h2>Patterns</h2>",
              _html_table(pattern_columns(report), rows, {1: "text"}),
              "<h2>Receptive field per layer</h2>",
              _html_table(layer_columns(report), [layer_cells(r) for r in report.layers])]
    if report.notes:
        parts += ["<h2>Notes</h2><ul>"] + [f"<li>{esc(n)}</li>" for n in report.notes] + \
            ["</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def figure_captions(report) -> list:
    """(title, caption, kind, data) of every figure: the caption says what the title cannot
    (what a cell or a line is, at which n, what is a bound)."""
    dynamic = {p.name for p in report.patterns if p.dynamic}
    out = []
    if report.pictures:
        tiles = sorted({tile for _, _, tile in report.pictures})
        if tiles == [1]:
            cell = "Each cell is one pair (query q, key k), dark when allowed in some head."
        else:
            size = "/".join(str(t) for t in tiles)
            cell = (f"Each cell is a {size}-token tile ({size} queries by {size} keys), dark "
                    "when at least one pair in it is allowed in some head: a pattern finer "
                    f"than {size} tokens shows as whole tiles.")
        shown = [name for name, _, _ in report.pictures]
        static = [name for name in shown if name in dynamic]
        static_text = (f" {', '.join(static)}: dynamic, drawn as its static part, the pairs "
                       "every selection keeps; a selection adds to them.") if static else ""
        more = len({p.name for p in report.patterns}) - len(shown)
        more_text = f" {plural(more, 'more pattern')} not drawn." if more > 0 else ""
        out.append(("allowed pairs of " + ", ".join(shown),
                    f"{cell} n = {report.n}.{static_text}{more_text}", "mask",
                    [(f"{name}: allowed pairs" if len(shown) == 1 else name, grid, tile)
                     for name, grid, tile in report.pictures]))
    if report.layers:
        formulas = (" Lines: the closed forms above at the same n, which lie on the markers "
                    "where they hold.") if report.formula_curves else ""
        bounds = (" Marked figures are bounds over every selection of the dynamic layers."
                  if any(name in report.bounds for name in ("rf_last", "rf_mean", "reach"))
                  else "")
        out.append(("receptive-field growth",
                    f"Markers: measured after each of the {plural(report.depth, 'layer')} at "
                    f"n = {report.n}: how many tokens the last query depends on, the mean over "
                    "all queries, and the largest reach q - min RF(q)." + formulas + bounds,
                    "growth", None))
        admissible = "pairs k <= q" if report.causal else "pairs (q, k)"
        depth = fmt_number(report.coverage_depth)
        out.append(("coverage per layer",
                    f"Share of the admissible {admissible} connected through L layers, and "
                    "share of the queries connected to every admissible key; coverage depth "
                    f"(all pairs connected): {depth}"
                    f"{bound_label(report, 'coverage_depth')}.", "coverage", None))
    return out


def _figures_html(report) -> str:
    from . import plots

    if not plots.available():
        return "<p class='skipped'>Plots skipped: matplotlib is not installed " \
               "(pip install 'spattn_dsl[report]').</p>"
    marks = {name: bound_label(report, name) for name in report.bounds}
    out = []
    for title, caption, kind, data in figure_captions(report):
        if kind == "mask":
            png = plots.masks_png(data, report.n)
        elif kind == "growth":
            png = plots.growth_png(report, marks, {name: formula_name(report, name)
                                                   for name in report.formula_curves})
        else:
            png = plots.coverage_png(report, marks)
        width, height = plots.png_size(png)
        out.append(
            f"<figure><img alt='{html_escape.escape(title)}' width='{width // plots.SCALE}' "
            f"height='{height // plots.SCALE}' src='data:image/png;base64,"
            f"{base64.b64encode(png).decode()}'><figcaption>{html_escape.escape(caption)}"
            f"</figcaption></figure>")
    return "".join(out)


__all__ = ["render", "text", "markdown", "to_html"]
