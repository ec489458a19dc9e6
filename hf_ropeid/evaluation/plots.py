"""Small matplotlib helpers (Agg backend, PNG output) shared by the evaluation and other tools.

Every helper takes plain Python numbers (lists, dicts), writes one PNG and closes its figure, so
callers never hold pyplot state. ``None`` or NaN values are drawn as gaps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import require

require("matplotlib", "eval", "Plotting the evaluation report")

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # no display needed; must come before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402

Series = Mapping[str, tuple[Sequence[float], Sequence[float | None]]]  # name -> (x, y)
LINE_STYLES = ("-", "--", ":", "-.")


def _clean(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def color_map(names: Sequence[str]) -> dict[str, tuple]:
    """A stable colour per name (the same variant has the same colour in every figure)."""
    palette = plt.get_cmap("tab10" if len(names) <= 10 else "tab20").colors  # tab20: pairs of light/dark hues
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def draw_lines(
    ax,
    series: Series,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    log_x: bool = False,
    log_y: bool = False,
    vline: float | None = None,
    vline_label: str = "",
    colors: Mapping[str, tuple] | None = None,
    styles: Mapping[str, str] | None = None,
    markers: bool = True,
    ylim: tuple[float, float] | None = None,
) -> None:
    """Draws one line per series on ``ax``; a dotted vertical line marks ``vline`` (e.g. the training length)."""
    colors = colors or color_map(list(series))
    for name, (x, y) in series.items():
        ax.plot(
            _clean(x),
            _clean(y),
            label=name,
            color=colors.get(name),
            linestyle=(styles or {}).get(name, "-"),
            marker="o" if markers else None,
            markersize=3,
            linewidth=1.4,
        )
    all_x = _finite([v for x, _ in series.values() for v in _clean(x)])
    # A marker outside the data (e.g. L beyond the longest window) would only squash the curves.
    if vline is not None and all_x and min(all_x) <= vline <= max(all_x):
        ax.axvline(vline, color="grey", linestyle=":", linewidth=1.2, label=vline_label or None)
    if log_x:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # 1024, not 2^10
    all_y = _finite([v for _, y in series.values() for v in _clean(y)])
    # A log axis only helps when values span a wide range; a narrow one gets unreadable ticks.
    if log_y and all_y and min(all_y) > 0 and max(all_y) / min(all_y) > 3:
        ax.set_yscale("log")
    if all_x and log_x:
        ax.set_xlim(min(all_x) / 1.15, max(all_x) * 1.15)  # every length stays on the axis, even with gaps
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)


def line_plot(path: str | Path, series: Series, *, legend_title: str = "", **kwargs) -> Path:
    """One panel of lines (see ``draw_lines`` for the keyword arguments)."""
    many = len(series) > 8  # a legend that long would cover the lines: it goes to the right of the axes
    fig, ax = plt.subplots(figsize=(9.5 if many else 7, 4.5))
    draw_lines(ax, series, **kwargs)
    if series:
        placement = dict(loc="upper left", bbox_to_anchor=(1.01, 1.0)) if many else dict(loc="best")
        ax.legend(fontsize=8, title=legend_title or None, **placement)
    return save_figure(fig, path)


def panel_grid(
    count: int,
    *,
    panel_size: tuple[float, float] = (4.2, 3.2),
    max_columns: int = 4,
    sharey: bool = False,
    layout: str | None = None,
):
    """A figure with ``count`` panels laid out in rows; returns (fig, flat list of the used axes)."""
    columns = min(max_columns, max(1, count))
    rows = math.ceil(max(1, count) / columns)
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(panel_size[0] * columns, panel_size[1] * rows),
        squeeze=False,
        sharey=sharey,
        layout=layout,
    )
    flat = [ax for row in axes for ax in row]
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def lines_grid(
    path: str | Path,
    panels: Mapping[str, Series],
    *,
    suptitle: str = "",
    sharey: bool = True,
    legend_title: str = "",
    **kwargs,
) -> Path:
    """One panel per key of ``panels`` (e.g. one per variant), each with its own lines."""
    fig, axes = panel_grid(len(panels), sharey=sharey, layout="constrained")
    names = list(dict.fromkeys(name for series in panels.values() for name in series))  # first-seen order
    colors = kwargs.pop("colors", None) or color_map(names)
    for ax, (title, series) in zip(axes, panels.items()):
        draw_lines(ax, series, title=title, colors=colors, **kwargs)
    if names:
        handles = [
            plt.Line2D([], [], color=colors[n], linestyle=(kwargs.get("styles") or {}).get(n, "-"), label=n)
            for n in names
        ]
        fig.legend(
            handles=handles, title=legend_title or None, loc="outside lower center", ncol=min(len(names), 8), fontsize=8
        )
    if suptitle:
        fig.suptitle(suptitle)
    return save_figure(fig, path)


def heatmap_grid(
    path: str | Path,
    grids: Mapping[str, Sequence[Sequence[float | None]]],
    *,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    xlabel: str,
    ylabel: str,
    suptitle: str = "",
    vmin: float = 0.0,
    vmax: float = 1.0,
    value_format: str = "{:.2f}",
    cmap: str = "RdYlGn",
) -> Path:
    """One annotated heatmap per key of ``grids`` (rows x columns); missing cells are grey."""
    fig, axes = panel_grid(
        len(grids), panel_size=(0.6 * len(column_labels) + 1.8, 0.4 * len(row_labels) + 1.6), layout="constrained"
    )
    colormap = plt.get_cmap(cmap).with_extremes(bad="lightgrey")
    image = None
    for ax, (title, grid) in zip(axes, grids.items()):
        values = [_clean(row) for row in grid]
        image = ax.imshow(values, vmin=vmin, vmax=vmax, cmap=colormap, aspect="auto")
        ax.set_xticks(range(len(column_labels)), column_labels, rotation=45, fontsize=8)
        ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
        if ax.get_subplotspec().is_last_row():
            ax.set_xlabel(xlabel, fontsize=9)
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel(ylabel, fontsize=9)
        ax.set_title(title, fontsize=10)
        for r, row in enumerate(values):
            for c, v in enumerate(row):
                if math.isfinite(v):
                    ax.text(c, r, value_format.format(v), ha="center", va="center", fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8)
    if suptitle:
        fig.suptitle(suptitle)
    return save_figure(fig, path)


__all__ = ["color_map", "draw_lines", "heatmap_grid", "line_plot", "lines_grid", "panel_grid", "save_figure"]
