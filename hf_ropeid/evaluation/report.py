"""The evaluation report: ``results.json``, ``results.md`` (markdown tables) and PNG plots, written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..atomic import atomic_directory, check_target

RESULTS_JSON = "results.json"
RESULTS_MARKDOWN = "results.md"


def _length_label(n: int, L: int) -> str:
    ratio = n / L
    if ratio == 1:
        return f"{n} (L)"
    if ratio < 1 and (L / n).is_integer():
        return f"{n} (L/{L // n})"
    return f"{n} ({ratio:.3g}L)"


def _table(title: str, rows: dict[str, list[str]], header: list[str]) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([name, *cells]) + " |" for name, cells in rows.items()]
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.3g}"


def results_markdown(results: dict[str, Any]) -> str:
    """Markdown tables (variants x lengths) of perplexity, tail perplexity and retrieval accuracy."""
    L, lengths, variants = results["training_length"], results["lengths"], results["variants"]
    header = ["variant", *(_length_label(n, L) for n in lengths)]
    ppl = results.get("perplexity", {})
    tables = [
        _table(
            f"Perplexity vs context length (training length L = {L})",
            {v: [_fmt(ppl.get(v, {}).get(str(n), {}).get("perplexity")) for n in lengths] for v in variants},
            header,
        ),
        _table(
            "Tail perplexity (last quarter of each window)",
            {v: [_fmt(ppl.get(v, {}).get(str(n), {}).get("tail_perplexity")) for n in lengths] for v in variants},
            header,
        ),
    ]
    for task, by_variant in results.get("retrieval", {}).items():
        rows = {}
        for v in variants:
            cells = []
            for n in lengths:
                accuracy = by_variant.get(v, {}).get(str(n), {}).get("accuracy")
                cells.append("–" if accuracy is None else f"{100 * accuracy:.0f}%")
            rows[v] = cells
        tables.append(_table(f"Retrieval accuracy, {task} (exact match, all depths)", rows, header))
    return "\n\n".join(tables) + "\n"


def load_results(path: str | Path) -> dict[str, Any]:
    """Reads ``results.json`` from an output folder (or the file itself)."""
    path = Path(path)
    return json.loads((path / RESULTS_JSON if path.is_dir() else path).read_text())


def write_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    from .diagnostics import plot_results as plot_diagnostics
    from .plots import color_map, line_plot, lines_grid
    from .retrieval import plot_results as plot_retrieval

    L, lengths, variants = results["training_length"], results["lengths"], results["variants"]
    colors = color_map(variants)
    written = []
    ppl = results["perplexity"]
    for key, label, name in (
        ("perplexity", "perplexity", "perplexity_vs_length.png"),
        ("tail_perplexity", "tail perplexity (last quarter)", "tail_perplexity_vs_length.png"),
    ):
        series = {v: (lengths, [ppl[v][str(n)][key] for n in lengths]) for v in variants if v in ppl}
        written.append(
            line_plot(
                out_dir / name,
                series,
                xlabel="context length (tokens)",
                ylabel=label,
                log_x=True,
                log_y=True,
                vline=L,
                vline_label=f"L = {L}",
                colors=colors,
                title=f"{label} vs context length",
            )
        )
    panels = {
        v: {str(n): _bucket_curve(ppl[v][str(n)]["position_loss"]) for n in lengths} for v in variants if v in ppl
    }
    written.append(
        lines_grid(
            out_dir / "position_loss.png",
            panels,
            xlabel="position in window",
            ylabel="mean loss (nats)",
            vline=L,
            legend_title="window length",
            markers=False,
            suptitle="Loss per position bucket",
        )
    )
    written += plot_retrieval(results, out_dir)
    written += plot_diagnostics(results, out_dir)
    return written


def _bucket_curve(buckets: dict[str, list]) -> tuple[list[float], list[float | None]]:
    centers = [(a + b) / 2 for a, b in zip(buckets["bucket_start"], buckets["bucket_end"])]
    return centers, buckets["mean"]


def _json_safe(value: Any) -> Any:
    """Non-finite floats become None (strict JSON); containers are converted recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_report(results: dict[str, Any], out_dir: str | Path, force: bool = False) -> Path:
    """Writes results.json, results.md and PNGs into ``out_dir`` through ``atomic_directory``.

    A non-empty ``out_dir`` is refused before anything is written unless ``force``; then the old
    folder stays in place until the new report is complete.
    """
    out_dir = Path(out_dir)
    check_target(out_dir, force, hint="choose another --out or pass --force to replace it")
    with atomic_directory(out_dir, force=force) as staging:
        (staging / RESULTS_JSON).write_text(json.dumps(_json_safe(results), indent=1, allow_nan=False) + "\n")
        (staging / RESULTS_MARKDOWN).write_text(results_markdown(results))
        write_plots(results, staging)
    return out_dir
