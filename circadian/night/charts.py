"""Charts as inline SVG (matplotlib, Agg), for the morning report and the dashboard alike.

`line_chart` puts a loss axis that spans more than a factor of 30 on a log scale, and places the
legend outside the plot so that no curve hides it and no label is cut off.
"""

from __future__ import annotations

import io

LOG_SPAN = 30.0  # a positive axis whose max / min exceeds this is drawn on a log scale


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def svg(fig) -> str:
    """Given a matplotlib figure, return it as an <svg> element (no XML prolog), and close it."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    _pyplot().close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def wants_log(values: list[float]) -> bool:
    """Whether values are positive and span more than LOG_SPAN (a loss falling from 1.7 to 0.001)."""
    values = [v for v in values if v is not None]
    return bool(values) and min(values) > 0 and max(values) / min(values) > LOG_SPAN


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    *,
    xlabel: str = "step",
    ylabel: str = "",
    title: str = "",
    marks: dict[str, float] | None = None,
    size: tuple[float, float] = (7.0, 3.2),
    points: bool = False,
) -> str:
    """Given {name: [(x, y), ...]}, return a line chart as SVG; `marks` adds dashed vertical lines
    ({label: x}). An empty chart says so."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=size)
    drawn = False
    for name, pts in series.items():
        pts = [(x, y) for x, y in pts if y is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o" if points or len(pts) < 3 else None, markersize=4, label=name)
            drawn = True
    for label, x in (marks or {}).items():
        ax.axvline(x, color="green", linestyle="--", linewidth=1, label=label)
    if not drawn:
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
    if wants_log([y for pts in series.values() for _x, y in pts]):
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and cycles are whole
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if drawn or marks:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return svg(fig)


def bar_chart(
    groups: list[str],
    bars: dict[str, list[float]],
    *,
    ylim: tuple[float, float] | None = (0, 1.05),
    size: tuple[float, float] = (7.0, 3.0),
) -> str:
    """Given group labels and {bar name: one value per group}, return grouped bars as SVG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=size)
    width = 0.8 / max(1, len(bars))
    for i, (name, values) in enumerate(bars.items()):
        offset = (i - (len(bars) - 1) / 2) * width
        ax.bar([g + offset for g in range(len(groups))], values, width=width, label=name)
    ax.set_xticks(list(range(len(groups))), groups)
    if ylim:
        ax.set_ylim(*ylim)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return svg(fig)
