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
        (f"tile density ({report.tile[0]}x{report.tile[1]})" + mark("tile_density"),
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
        f"query {q} does not see key {k} within {report.depth} layers"


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
    return (f"{report.kind} {report.name}, n = {report.n}, {report.depth} layers analysed, "
            f"method {report.method} ({exact})")


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


# ---------------------------------------------------------------- markdown
def _md_table(columns, rows) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out)


def markdown(report) -> str:
    parts = [f"# Graph-diameter report: {report.name}", "", header(report) + ".", "",
             "## Summary", "", _md_table(("figure", "value"), summary_rows(report))]
    if report.formulas:
        rows = [(name, f"`{expr}`", value) for name, expr, value in formula_rows(report)]
        parts += ["", "## Closed forms", "", _md_table(("figure", "formula", "value"), rows)]
        if report.formula_conditions:
            parts += ["", conditions_text(report).capitalize() + "."]
    if report.certificate is not None:
        parts += ["", "## Universal-approximation certificate", "",
                  f"{SOURCE}: {report.certificate.line()}.", "",
                  _md_table(("condition", "finding"), certificate_rows(report))]
    parts += ["", "## Patterns", "",
              _md_table(pattern_columns(report), [pattern_cells(p) for p in report.patterns])]
    parts += ["", "## Receptive field per layer", "",
              _md_table(layer_columns(report), [layer_cells(r) for r in report.layers])]
    if report.notes:
        parts += ["", "## Notes", ""] + [f"- {note}" for note in report.notes]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- html
_STYLE = """body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}
figure{display:inline-block;margin:.5em}code{background:#f6f6f6}"""


def _html_table(columns, rows) -> str:
    esc = html_escape.escape
    head = "".join(f"<th>{esc(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(report) -> str:
    esc = html_escape.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
             f"<title>spattn report: {esc(report.name)}</title><style>{_STYLE}</style></head>"
             f"<body><h1>Graph-diameter report: {esc(report.name)}</h1>",
             f"<p>{esc(header(report))}.</p>", "<h2>Summary</h2>",
             _html_table(("figure", "value"), summary_rows(report))]
    if report.formulas:
        parts += ["<h2>Closed forms</h2>",
                  _html_table(("figure", "formula", "value"), formula_rows(report))]
        if report.formula_conditions:
            parts.append(f"<p>{esc(conditions_text(report).capitalize())}.</p>")
    if report.certificate is not None:
        parts += ["<h2>Universal-approximation certificate</h2>",
                  f"<p>{esc(SOURCE)}: {esc(report.certificate.line())}.</p>",
                  _html_table(("condition", "finding"), certificate_rows(report))]
    parts += ["<h2>Figures</h2>", _figures_html(report)]
    parts += ["<h2>Patterns</h2>",
              _html_table(pattern_columns(report), [pattern_cells(p) for p in report.patterns]),
              "<h2>Receptive field per layer</h2>",
              _html_table(layer_columns(report), [layer_cells(r) for r in report.layers])]
    if report.notes:
        parts += ["<h2>Notes</h2><ul>"] + [f"<li>{esc(n)}</li>" for n in report.notes] + \
            ["</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _figures_html(report) -> str:
    from . import plots

    if not plots.available():
        return "<p class='skipped'>Plots skipped: matplotlib is not installed " \
               "(pip install 'spattn_dsl[report]').</p>"
    figures = [(f"mask of {name} ({tile}x{tile} tiles)", plots.mask_png(grid, tile, report.n))
               for name, grid, tile in report.pictures]
    if report.layers:
        figures.append(("receptive field per layer", plots.growth_png(report)))
        figures.append(("coverage per layer", plots.coverage_png(report)))
    return "".join(
        f"<figure><img alt='{html_escape.escape(caption)}' src='data:image/png;base64,"
        f"{base64.b64encode(png).decode()}'><figcaption>{html_escape.escape(caption)}"
        f"</figcaption></figure>" for caption, png in figures)


__all__ = ["render", "text", "markdown", "to_html"]
