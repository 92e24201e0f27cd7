"""PNG pictures for reports (matplotlib, imported lazily: it is an optional extra)."""
from __future__ import annotations

import io


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


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


def mask_png(grid, tile: int, n: int) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(grid, cmap="Blues", interpolation="nearest", extent=(0, n, n, 0), vmin=0, vmax=1)
    ax.set_xlabel("key k")
    ax.set_ylabel("query q")
    ax.set_title(f"allowed pairs ({tile}x{tile} tiles)" if tile > 1 else "allowed pairs")
    return _png(fig)


def growth_png(report) -> bytes:
    plt = _pyplot()
    layers = [r.layer for r in report.layers]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(layers, [r.rf_last for r in report.layers], "o-", label="RF of the last token")
    ax.plot(layers, [r.rf_mean for r in report.layers], "s-", label="mean RF")
    ax.plot(layers, [r.reach for r in report.layers], "^-", label="largest reach")
    for name, values in report.formula_curves.items():
        ax.plot(layers, values, "k--", linewidth=1, label=f"formula: {name}")
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
    ax.set_xlabel("layers")
    ax.set_ylabel("% covered")
    ax.legend(fontsize=7)
    ax.set_title("coverage per layer")
    return _png(fig)
