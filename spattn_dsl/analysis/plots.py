"""PNG pictures for reports (matplotlib, imported lazily: it is an optional extra).

Every figure is ``WIDTH`` inches wide at ``CSS_DPI`` (900 CSS pixels: the width of the
report's column) and saved at ``SCALE`` times that resolution, so it stays sharp on a
high-density laptop screen; ``css_width(png)`` is the width to show it at."""
from __future__ import annotations

import io

WIDTH = 9.0  # inches
CSS_DPI = 100  # CSS pixels per inch of a figure: 900 px wide
SCALE = 2  # PNG pixels per CSS pixel
FONT_SIZE = 12  # points at CSS_DPI: about 17 CSS pixels


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


MEASURED_COLOURS = ("tab:blue", "tab:green", "tab:purple")
FORMULA_COLOURS = ("tab:red", "tab:orange", "black", "tab:brown", "tab:pink")
FORMULA_DASHES = ("--", "-.", ":", (0, (5, 1, 1, 1)), (0, (3, 3)))
LIT, UNLIT = "#1f4e96", "#f2f5fa"  # a tile holding an allowed pair, one without


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _styled(draw):
    """Run ``draw`` with the report's fonts (legible at 900 CSS pixels)."""
    import functools

    @functools.wraps(draw)
    def styled(*args, **kwargs):
        with _pyplot().rc_context({"font.size": FONT_SIZE, "axes.titlesize": FONT_SIZE + 2,
                                   "legend.fontsize": FONT_SIZE - 1}):
            return draw(*args, **kwargs)
    return styled


def _figure(height: float):
    """A figure of the report's width and ``height`` inches."""
    return _pyplot().figure(figsize=(WIDTH, height), dpi=CSS_DPI, layout="constrained")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=CSS_DPI * SCALE)  # no "tight" box: keep the width
    _pyplot().close(fig)
    return buffer.getvalue()


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels, from the PNG's header."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def css_width(png: bytes) -> int:
    """The width in CSS pixels to show a report figure at (its pixels / SCALE)."""
    return png_size(png)[0] // SCALE


def token_label(value: float) -> str:
    """A token count for an axis: 512, 32K, 128K, 1M, 1.5M (K = 1024, M = 1024 K)."""
    for unit, suffix in ((1 << 20, "M"), (1 << 10, "K")):
        if abs(value) >= unit:
            return f"{value / unit:.4g}{suffix}"
    return f"{value:.4g}"


def token_ticks(axis, largest: float):
    """About 4-8 ticks on power-of-two multiples, labelled 32K, 128K, 1M."""
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    if largest >= 8:
        step = 1 << max(0, (int(largest) // 4).bit_length() - 1)
        axis.set_major_locator(MultipleLocator(step))
    axis.set_major_formatter(FuncFormatter(lambda value, _: token_label(value)))


def layer_ticks(axis):
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


@_styled
def mask_png(grid, tile: int, n: int, title: str = "allowed pairs") -> bytes:
    """One mask, one cell per ``tile``-token tile, with a key to its two colours."""
    return masks_png([(title, grid, tile)], n)


@_styled
def masks_png(pictures, n: int) -> bytes:
    """Masks side by side, two to a row: ``pictures`` of (title, grid, tile size)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    cols = min(2, len(pictures))
    rows = -(-len(pictures) // cols)
    side = 4.5 if cols == 1 else 3.4  # inches: one square mask
    band = 0.3 if cols == 1 else 0.6  # above the masks: the key, when it spans the figure
    height = rows * (side + 1.1) + band
    fig = _pyplot().figure(figsize=(WIDTH, height), dpi=CSS_DPI)
    axes = []
    for i, (title, grid, tile) in enumerate(pictures):
        r, c = divmod(i, cols)
        left = (0.9 + c * (side + 1.1)) / WIDTH
        bottom = (height - band - (r + 1) * (side + 1.1) + 0.7) / height
        ax = fig.add_axes((left, bottom, side / WIDTH, side / height))
        ax.imshow(grid, cmap=ListedColormap([UNLIT, LIT]), interpolation="nearest",
                  extent=(0, n, n, 0), vmin=0, vmax=1)
        token_ticks(ax.xaxis, n)
        token_ticks(ax.yaxis, n)
        ax.set_xlabel("key position k")
        ax.set_ylabel("query position q")
        ax.set_title(title)
        axes.append(ax)
    tiles = {tile for _, _, tile in pictures}
    cell = f"{tiles.pop()}-token tile" if len(tiles) == 1 else "tile"
    if cell == "1-token tile":
        labels = ("pair (q, k) allowed", "pair (q, k) not allowed")
    else:
        labels = (f"{cell}: some pair allowed", f"{cell}: none allowed")
    handles = [Patch(facecolor=colour, edgecolor="grey", label=label)
               for colour, label in zip((LIT, UNLIT), labels)]
    if cols == 1:
        anchor = (axes[0].get_position().x1 + 0.3 / WIDTH, axes[0].get_position().y1)
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=anchor, frameon=False)
    else:
        fig.legend(handles=handles, loc="upper center", ncols=2, frameon=False,
                   bbox_to_anchor=(0.5, 1.0))
    return _png(fig)


@_styled
def growth_png(report, marks=None, names=None) -> bytes:
    """Receptive-field growth per layer, measured (markers) and closed forms (dashed lines).
    ``marks``: figure name -> " (lower bound)" etc., appended to the legend's labels;
    ``names``: a closed form's name -> its label."""
    marks, names = marks or {}, names or {}
    layers = [r.layer for r in report.layers]
    fig = _figure(5.2)
    ax = fig.add_subplot()
    measured = [("RF of the last token", "rf_last", "o", [r.rf_last for r in report.layers]),
                ("mean RF", "rf_mean", "s", [r.rf_mean for r in report.layers]),
                ("largest reach", "reach", "^", [r.reach for r in report.layers])]
    for (label, name, marker, values), colour in zip(measured, MEASURED_COLOURS):
        ax.plot(layers, values, marker=marker, markersize=6, linestyle="-", color=colour,
                alpha=0.6, zorder=2, label=label + marks.get(name, ""))
    # formulas above the markers, each in its own colour and dash pattern
    for (name, values), colour, dashes in zip(report.formula_curves.items(), FORMULA_COLOURS,
                                              FORMULA_DASHES):
        finite = [v if v != float("inf") else float("nan") for v in values]
        ax.plot(layers, finite, color=colour, linestyle=dashes, linewidth=2.2, zorder=3,
                label="formula: " + names.get(name, name.replace("_", " ")))
    layer_ticks(ax.xaxis)
    token_ticks(ax.yaxis, max(max(values) for *_, values in measured) or 1)
    ax.set_xlabel("layers L")
    ax.set_ylabel("tokens")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", frameon=False)
    ax.set_title("receptive-field growth")
    return _png(fig)


@_styled
def coverage_png(report, marks=None) -> bytes:
    """Coverage per layer: admissible pairs connected, queries that see all their keys."""
    marks = marks or {}
    layers = [r.layer for r in report.layers]
    fig = _figure(4.6)
    ax = fig.add_subplot()
    ax.plot(layers, [100 * r.coverage for r in report.layers], "o-", markersize=6,
            label="admissible pairs connected" + marks.get("coverage", ""))
    ax.plot(layers, [100 * r.full_rows for r in report.layers], "s--", markersize=6,
            label="queries that see every admissible key" + marks.get("coverage", ""))
    ax.set_ylim(0, 105)
    layer_ticks(ax.xaxis)
    ax.set_xlabel("layers L")
    ax.set_ylabel("% covered")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", frameon=False)
    ax.set_title("coverage per layer")
    return _png(fig)
