"""The paper's geometric diagnostics, measured on post-rotation queries and keys of chosen heads.

- Sink health (per query position ``p``): the attention mass on token 0, and the margin
  ``max_{0<j<=p} (q_p.k_j) - q_p.k_0`` in softmax-logit units. A healthy sink has a negative margin;
  failure past ``L`` shows as positive margins and sink mass near 0.
- Cluster separation: for the key (and query) matrix of a window, the first-singular-value share
  ``sigma_1 / sqrt(sum sigma_i^2)`` (1 for a rank-1 cluster) and the stable rank
  ``sum sigma_i^2 / sigma_1^2``, for all channels and split by channel group: "rotated" /
  "unrotated" pairs when some pairs do not rotate (RoPE-ID, p-RoPE), else the fast and slow halves
  of the spectrum ("fast_half" / "slow_half": the same channels RoPE-ID would rotate / leave alone).

Queries and keys are captured with forward hooks on ``q_proj``/``k_proj`` and the rotary module, and
rotated here exactly as the attention does (temperature included), so any attention kernel works.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers.models.llama.modeling_llama import rotate_half

from .passes import bucket_means


def singular_value_stats(matrix: torch.Tensor) -> dict[str, float | None]:
    """``first_singular_share`` and ``stable_rank`` of a ``[rows, columns]`` matrix (None for a zero matrix)."""
    x = matrix.to(torch.float64)
    eig = torch.linalg.eigvalsh(x.T @ x).clamp(min=0)  # squared singular values; columns are few
    total, top = float(eig.sum()), float(eig.max())
    if total <= 0:
        return {"first_singular_share": None, "stable_rank": None}
    return {"first_singular_share": math.sqrt(top / total), "stable_rank": total / top}


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Cosine between the mean rows of ``a`` and ``b`` (negative: the clusters point away from each other)."""
    ma, mb = a.to(torch.float64).mean(0), b.to(torch.float64).mean(0)
    denominator = float(ma.norm() * mb.norm())
    return float(ma @ mb) / denominator if denominator > 0 else None


def channel_groups(inv_freq: torch.Tensor) -> dict[str, torch.Tensor]:
    """Channel indices (half-split layout: pair i is channels i and i + d/2) of each group."""
    pairs = inv_freq.numel()
    rotated = torch.nonzero(inv_freq.detach().cpu() > 0).flatten()
    unrotated = torch.nonzero(inv_freq.detach().cpu() == 0).flatten()
    if len(unrotated) and len(rotated):
        groups = {"rotated": rotated, "unrotated": unrotated}
    elif len(rotated):
        groups = {"fast_half": torch.arange(pairs // 2), "slow_half": torch.arange(pairs // 2, pairs)}
    else:
        groups = {}
    out = {"all": torch.arange(2 * pairs)}
    out.update({name: torch.cat([p, p + pairs]) for name, p in groups.items()})
    return out


def sink_statistics(
    queries: torch.Tensor, keys: torch.Tensor, scaling: float, positions: torch.Tensor, chunk: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sink mass and sink margin at query ``positions`` (each >= 1), causal, for one head.

    ``queries``/``keys``: ``[n, head_dim]`` after rotation. Returns two float64 tensors like ``positions``.
    """
    masses, margins = [], []
    keys = keys.to(torch.float32)
    for start in range(0, positions.numel(), chunk):
        p = positions[start : start + chunk]
        upto = int(p.max()) + 1
        scores = (queries[p].to(torch.float32) @ keys[:upto].T) * scaling  # [c, upto]
        future = torch.arange(upto, device=scores.device)[None, :] > p[:, None].to(scores.device)
        scores = scores.masked_fill(future, float("-inf"))
        masses.append(torch.softmax(scores, dim=-1)[:, 0].double())
        others = scores[:, 1:].max(dim=-1).values
        margins.append((others - scores[:, 0]).double())
    return torch.cat(masses).cpu(), torch.cat(margins).cpu()


@torch.inference_mode()
def capture_queries_keys(
    model, input_ids: torch.Tensor, layers: Sequence[int]
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Post-rotation ``(queries [heads, n, d], keys [kv_heads, n, d])`` of the first sequence, per layer."""
    decoder = model.get_decoder()
    captured: dict[str, Any] = {}
    handles = [decoder.rotary_emb.register_forward_hook(lambda m, i, out: captured.__setitem__("rotary", out))]
    for layer in layers:
        attention = decoder.layers[layer].self_attn
        for name in ("q_proj", "k_proj"):
            handles.append(
                getattr(attention, name).register_forward_hook(
                    lambda m, i, out, key=(layer, name): captured.__setitem__(key, out[0].detach())
                )
            )
    try:
        device = next(model.parameters()).device
        decoder(input_ids=input_ids[:1].to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    cos, sin = (t[0].float()[None] for t in captured["rotary"])  # each [1, n, d]
    out = {}
    for layer in layers:
        attention = decoder.layers[layer].self_attn
        head_dim = attention.head_dim
        q = captured[(layer, "q_proj")].unflatten(-1, (-1, head_dim)).transpose(0, 1).float()  # [heads, n, d]
        k = captured[(layer, "k_proj")].unflatten(-1, (-1, head_dim)).transpose(0, 1).float()
        q_rot = q * cos + rotate_half(q) * sin
        k_rot = k * cos + rotate_half(k) * sin
        rope_id = getattr(attention, "rope_id", None)  # LlamaRopeIDAttention: queries carry the temperature
        if rope_id is not None:
            q_rot = q_rot * rope_id.query_scale(torch.arange(q.shape[1], device=q.device))[:, None]
        out[layer] = (q_rot, k_rot)
    return out


def default_layers(num_layers: int) -> list[int]:
    return sorted({0, num_layers // 2, num_layers - 1})


def diagnose(
    model,
    input_ids: torch.Tensor,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    max_queries: int = 256,
    position_buckets: int = 32,
    training_length: int | None = None,
) -> dict[str, Any]:
    """Diagnostics of one window (``input_ids[:1]``) for the chosen layers and query heads.

    Returns per layer/head curves (bucketed over query positions) and cluster statistics, plus a
    ``summary`` averaged over the chosen heads.
    """

    config = model.config
    num_layers, num_heads = config.num_hidden_layers, config.num_attention_heads
    layers = list(layers) if layers is not None else default_layers(num_layers)
    heads = list(heads) if heads is not None else list(range(num_heads))
    bad = [x for x in layers if not 0 <= x < num_layers] + [h for h in heads if not 0 <= h < num_heads]
    if bad:
        raise ValueError(
            f"Diagnostic layers must be in 0..{num_layers - 1} and heads in 0..{num_heads - 1}; got {layers} / {heads}."
        )
    n = input_ids.shape[1]
    training_length = training_length or n
    positions = torch.unique(torch.linspace(1, n - 1, max(1, min(max_queries, n - 1))).round().long())
    captured = capture_queries_keys(model, input_ids, layers)
    groups = channel_groups(model.get_decoder().rotary_emb.inv_freq)
    per_layer: dict[str, Any] = {}
    collected: list[dict[str, Any]] = []
    for layer in layers:
        queries, keys = captured[layer]
        scaling = model.get_decoder().layers[layer].self_attn.scaling
        group_size = queries.shape[0] // keys.shape[0]
        per_layer[str(layer)] = {}
        for head in heads:
            q, k = queries[head], keys[head // group_size]
            mass, margin = sink_statistics(q, k, scaling, positions.to(q.device))
            beyond = margin[positions >= training_length]
            stats = {
                "sink_mass": bucket_means(mass, positions, n, position_buckets),
                "sink_margin": bucket_means(margin, positions, n, position_buckets),
                "sink_mass_mean": float(mass.mean()),
                "positive_margin_fraction": float((margin > 0).double().mean()),
                "positive_margin_fraction_beyond_L": float((beyond > 0).double().mean()) if len(beyond) else None,
                "keys": {g: singular_value_stats(k[:, idx]) for g, idx in groups.items()},
                "queries": {g: singular_value_stats(q[:, idx]) for g, idx in groups.items()},
                "qk_mean_cosine": {g: mean_cosine(q[:, idx], k[:, idx]) for g, idx in groups.items()},
            }
            per_layer[str(layer)][str(head)] = stats
            collected.append(stats)
    return {
        "length": n,
        "layers": per_layer,
        "channel_groups": {g: len(idx) for g, idx in groups.items()},
        "summary": _summarise(collected),
    }


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return sum(kept) / len(kept) if kept else None


def _summarise(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over heads: bucket curves point by point, scalars as they are."""
    first = stats[0]
    summary: dict[str, Any] = {}
    for curve in ("sink_mass", "sink_margin"):
        summary[curve] = {
            **{k: first[curve][k] for k in ("bucket_start", "bucket_end")},
            "mean": [_mean([s[curve]["mean"][i] for s in stats]) for i in range(len(first[curve]["mean"]))],
        }
    for scalar in ("sink_mass_mean", "positive_margin_fraction", "positive_margin_fraction_beyond_L"):
        summary[scalar] = _mean([s[scalar] for s in stats])
    for which in ("keys", "queries"):
        summary[which] = {
            g: {metric: _mean([s[which][g][metric] for s in stats]) for metric in first[which][g]} for g in first[which]
        }
    summary["qk_mean_cosine"] = {g: _mean([s["qk_mean_cosine"][g] for s in stats]) for g in first["qk_mean_cosine"]}
    return summary


def plot_results(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Sink mass/margin per position (panel per variant) and cluster separation vs length."""
    from .plots import LINE_STYLES, color_map, draw_lines, lines_grid, panel_grid, plt, save_figure

    diagnostics = results.get("diagnostics") or {}
    if not diagnostics:
        return []
    L, lengths = results["training_length"], results["lengths"]
    variants = [v for v in results["variants"] if v in diagnostics]
    written = []
    for curve, label in (("sink_mass", "attention mass on token 0"), ("sink_margin", "sink margin (logits)")):
        panels = {}
        for v in variants:
            panels[v] = {}
            for n in lengths:
                buckets = diagnostics[v][str(n)]["summary"][curve]
                centers = [(a + b) / 2 for a, b in zip(buckets["bucket_start"], buckets["bucket_end"])]
                panels[v][str(n)] = (centers, buckets["mean"])
        written.append(
            lines_grid(
                out_dir / f"{curve}_vs_position.png",
                panels,
                xlabel="query position",
                ylabel=label,
                vline=L,
                legend_title="window length",
                markers=False,
                suptitle=f"{label} (mean over diagnosed heads)",
            )
        )
    colors = color_map(results["variants"])
    fig, axes = panel_grid(3, panel_size=(5.0, 3.8), max_columns=3, layout="constrained")
    for ax, which in zip(axes[:2], ("keys", "queries")):
        series, styles, line_colors = {}, {}, {}
        for v in variants:
            group_names = list(diagnostics[v][str(lengths[0])]["summary"][which])
            for i, g in enumerate(group_names):
                name = f"{v} · {g}"
                series[name] = (
                    lengths,
                    [diagnostics[v][str(n)]["summary"][which][g]["first_singular_share"] for n in lengths],
                )
                styles[name], line_colors[name] = LINE_STYLES[i % 4], colors[v]
        draw_lines(
            ax,
            series,
            xlabel="context length",
            ylabel="first singular value share",
            log_x=True,
            vline=L,
            title=f"{which}: cluster separation (1 = rank one)",
            colors=line_colors,
            styles=styles,
        )
    series = {
        v: (lengths, [diagnostics[v][str(n)]["summary"]["positive_margin_fraction"] for n in lengths]) for v in variants
    }
    draw_lines(
        axes[2],
        series,
        xlabel="context length",
        ylabel="fraction of queries with margin > 0",
        log_x=True,
        vline=L,
        title="sink failures",
        colors=colors,
    )
    handles = [plt.Line2D([], [], color=colors[v], label=v) for v in variants]
    handles += [
        plt.Line2D([], [], color="black", linestyle=LINE_STYLES[i], label=label)
        for i, label in enumerate(("all channels", "rotated / fast half", "unrotated / slow half"))
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=6, fontsize=8)
    written.append(save_figure(fig, out_dir / "cluster_separation_vs_length.png"))
    return written


__all__ = [
    "capture_queries_keys",
    "channel_groups",
    "diagnose",
    "mean_cosine",
    "singular_value_stats",
    "sink_statistics",
]
