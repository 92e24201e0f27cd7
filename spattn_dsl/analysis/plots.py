"""PNG pictures for reports (matplotlib, imported lazily: it is an optional extra)."""
from __future__ import annotations

import io


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


MEASURED_COLOURS = ("tab:blue", "tab:green", "tab:purple")
FORMULA_COLOURS = ("tab:red", "tab:orange", "black", "tab:brown", "tab:pink")
FORMULA_DASHES = ("--", "-.", ":", (0, (5, 1, 1, 1)), (0, (3, 3)))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


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


def mask_png(grid, tile: int, n: int) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(grid, cmap="Blues", interpolation="nearest", extent=(0, n, n, 0), vmin=0, vmax=1)
    token_ticks(ax.xaxis, n)
    token_ticks(ax.yaxis, n)
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_xlabel("key k")
    ax.set_ylabel("query q")
    ax.set_title(f"allowed pairs ({tile}x{tile} tiles)" if tile > 1 else "allowed pairs")
    return _png(fig)


def growth_png(report) -> bytes:
    plt = _pyplot()
    layers = [r.layer for r in report.layers]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    measured = [("RF of the last token", "o", [r.rf_last for r in report.layers]),
                ("mean RF", "s", [r.rf_mean for r in report.layers]),
                ("largest reach", "^", [r.reach for r in report.layers])]
    for (label, marker, values), colour in zip(measured, MEASURED_COLOURS):
        ax.plot(layers, values, marker=marker, markersize=4, linestyle="-", color=colour,
                alpha=0.6, zorder=2, label=label)
    # formulas above the markers, each in its own colour and dash pattern
    for (name, values), colour, dashes in zip(report.formula_curves.items(), FORMULA_COLOURS,
                                              FORMULA_DASHES):
        finite = [v if v != float("inf") else float("nan") for v in values]
        ax.plot(layers, finite, color=colour, linestyle=dashes, linewidth=2.2, zorder=3,
                label=f"formula: {name}")
    layer_ticks(ax.xaxis)
    token_ticks(ax.yaxis, max(max(values) for _, _, values in measured) or 1)
    ax.set_xlabel("layers")
    ax.set_ylabel("tokens")
    ax.legend(fontsize=7)
    ax.set_title("receptive-field growth")
    return _png(fig)


def coverage_png(report) -> bytes:
    plt = _pyplot()
    layers = [r.layer for r in report.layers]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(layers, [100 * r.coverage for r in report.layers], "o-", label="admissible pairs")
    ax.plot(layers, [100 * r.full_rows for r in report.layers], "s-", label="queries covered")
    ax.set_ylim(0, 105)
    layer_ticks(ax.xaxis)
    ax.set_xlabel("layers")
    ax.set_ylabel("% covered")
    ax.legend(fontsize=7)
    ax.set_title("coverage per layer")
    return _png(fig)
