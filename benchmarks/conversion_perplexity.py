"""Perplexity of SmolLM2-135M-Instruct before and after conversion, per strategy, no fine-tuning.

Every strategy is converted in memory (``convert_model``) from the same float32 source and scored
on the same tokens: non-overlapping windows from the start of Hamlet, ``--tokens-per-length``
tokens per length, each window an independent sequence. Calibrated channel selection uses a
different play (Macbeth), so no evaluation text leaks into it. Lengths stay inside the training
length (8192), so the attention temperature plays no part.

    .venv/bin/python benchmarks/conversion_perplexity.py            # ~15 min of CPU, 1 thread

Writes results.json (after every strategy, so a partial run keeps its rows), perplexity.md and
perplexity.png to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

# name -> (channel_selection, RoPE-ID parameters); None: the unconverted source.
STRATEGIES: dict[str, tuple[str, dict] | None] = {
    "source (RoPE)": None,
    "frequency + original, 16/32 (p-RoPE)": ("frequency", {"spectrum": "original", "rotary_fraction": 0.5}),
    "frequency + original, auto 19/32": ("frequency", {"spectrum": "original", "rotary_fraction": "auto"}),
    "frequency + rope_id, 16/32 (paper)": ("frequency", {"spectrum": "rope_id", "rotary_fraction": 0.5}),
    "frequency + minimal, 20/32": ("frequency", {"spectrum": "minimal", "rotary_fraction": 20 / 32}),
    "frequency + minimal, 21/32": ("frequency", {"spectrum": "minimal", "rotary_fraction": 21 / 32}),
    "frequency + minimal, 22/32": ("frequency", {"spectrum": "minimal", "rotary_fraction": 22 / 32}),
    "frequency + minimal, 23/32": ("frequency", {"spectrum": "minimal", "rotary_fraction": 23 / 32}),
    "frequency + minimal, 24/32": ("frequency", {"spectrum": "minimal", "rotary_fraction": 0.75}),
    "frequency + minimal, 26/32": ("frequency", {"spectrum": "minimal", "rotary_fraction": 26 / 32}),
    "frequency + minimal, 28/32": ("frequency", {"spectrum": "minimal", "rotary_fraction": 28 / 32}),
    "frequency + minimal, 32/32": ("frequency", {"spectrum": "minimal", "rotary_fraction": 1.0}),
    "calibrated + original, 16/32": ("calibrated", {"spectrum": "original", "rotary_fraction": 0.5}),
    "calibrated + original, auto 19/32": ("calibrated", {"spectrum": "original", "rotary_fraction": "auto"}),
    "calibrated + rope_id, 16/32": ("calibrated", {"spectrum": "rope_id", "rotary_fraction": 0.5}),
}


def tokens(tokenizer, path: Path, count: int) -> torch.Tensor:
    text = path.read_text(encoding="utf-8", errors="replace")
    ids = tokenizer(text[: count * 16], add_special_tokens=False)["input_ids"][:count]
    if len(ids) < count:
        raise SystemExit(f"{path.name} has only {len(ids)} tokens; {count} needed")
    return torch.tensor([ids])


def selection_overlap(model, calibration_ids, config) -> float:
    """Mean share of calibrated pairs that are also among the fastest n (what 'frequency' picks)."""
    from hf_ropeid.conversion import calibrated_permutations, head_dim_of, pair_energies

    n = int(round(config.rope_parameters["rotary_fraction"] * head_dim_of(config) / 2))
    chosen = calibrated_permutations(pair_energies(model, calibration_ids), n)[..., :n]
    return float((chosen < n).float().mean())


def plot(results: dict, lengths: list[int], path: Path) -> None:
    """Left: every strategy (log scale). Right: those within 1.5x of the source's perplexity, zoomed in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in STRATEGIES if n in results]
    source = geometric_mean([results[names[0]]["perplexity"][str(n)] for n in lengths])
    colors = dict(zip(names, plt.get_cmap("tab20").colors))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, zoom in zip(axes, (False, True)):
        for name in names:
            row = results[name]
            ys = [row["perplexity"][str(n)] for n in lengths]
            if zoom and geometric_mean(ys) > 1.5 * source:
                continue
            style = "-o" if row["channel_selection"] != "calibrated" else "--s"
            ax.plot(lengths, ys, style, color="black" if row["channel_selection"] is None else colors[name], label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.set_xlabel("tokens per window")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("perplexity on Hamlet (log scale)")
    axes[0].set_title("all strategies")
    axes[1].set_ylabel("perplexity on Hamlet")
    axes[1].set_title("within 1.5x of the source (geometric mean)")
    fig.suptitle("SmolLM2-135M-Instruct converted to RoPE-ID, no fine-tuning")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(results: dict, lengths: list[int]) -> str:
    """Rows in STRATEGIES order; "geo. mean" (of the perplexities over all lengths) picks the default."""
    lines = [
        "| strategy | rotated pairs | " + " | ".join(f"ppl @ {n}" for n in lengths) + " | geo. mean | calibrated pairs among the fastest n |",
        "|---|---|" + "---|" * len(lengths) + "---|---|",
    ]
    for name in [n for n in STRATEGIES if n in results]:
        row = results[name]
        values = [row["perplexity"][str(n)] for n in lengths]
        cells = " | ".join(f"{v:.1f}" for v in values)
        overlap = f"{row['overlap']:.0%}" if row.get("overlap") is not None else "-"
        lines.append(f"| {name} | {row['rotated_pairs']} | {cells} | {geometric_mean(values):.1f} | {overlap} |")
    return "\n".join(lines)


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="256,512,1024,2048")
    parser.add_argument("--tokens-per-length", type=int, default=4096)
    parser.add_argument("--text", default="hamlet")
    parser.add_argument("--calibration-text", default="macbeth")
    parser.add_argument("--calibration-tokens", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="names of strategies to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/conversion"))
    parser.add_argument("--replot", action="store_true", help="only rewrite perplexity.md/.png from results.json")
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    if args.replot:
        results = json.loads((args.out / "results.json").read_text())["results"]
        (args.out / "perplexity.md").write_text(table(results, lengths) + "\n")
        plot(results, lengths, args.out / "perplexity.png")
        return

    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer, LlamaForCausalLM

    from hf_ropeid.assets import shakespeare_texts, smollm2_checkpoint
    from hf_ropeid.conversion import convert_model, head_dim_of
    from hf_ropeid.verification import perplexity_at_lengths

    folder = smollm2_checkpoint("float32")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = shakespeare_texts()
    eval_ids = tokens(tokenizer, texts[args.text], args.tokens_per_length)
    calibration_ids = tokens(tokenizer, texts[args.calibration_text], args.calibration_tokens)
    source = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    pairs = head_dim_of(source.config) // 2

    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    # --only adds to (or replaces rows of) an earlier run's results.
    previous = json.loads(results_file.read_text()) if args.only and results_file.is_file() else {}
    results = previous.get("results", {})
    command = "benchmarks/conversion_perplexity.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(repr(x) for x in v) if isinstance(v, list) else v}" for k, v in vars(args).items() if v is not None
    )
    commands = previous.get("commands", []) + [command]
    for name, strategy in STRATEGIES.items():
        if args.only and name not in args.only:
            continue
        cpu, wall = time.process_time(), time.perf_counter()
        if strategy is None:
            model, selection, rope, overlap, rotated = source, None, dict(source.config.rope_parameters), None, pairs
        else:
            selection, params = strategy
            model = convert_model(source, channel_selection=selection, calibration_input_ids=calibration_ids, **params).eval()
            rope = dict(model.config.rope_parameters)
            rotated = int(round(rope["rotary_fraction"] * pairs))
            overlap = selection_overlap(source, calibration_ids, model.config) if selection == "calibrated" else None
        scores = perplexity_at_lengths(model, eval_ids, lengths, args.tokens_per_length, progress=True)
        results[name] = {
            "channel_selection": selection,
            "rope_parameters": rope,
            "rotated_pairs": rotated,
            "overlap": overlap,
            "perplexity": {str(n): scores[n]["perplexity"] for n in lengths},
            "windows": {str(n): scores[n]["windows"] for n in lengths},
            "cpu_s": round(time.process_time() - cpu, 1),
            "wall_s": round(time.perf_counter() - wall, 1),
        }
        print(name, {n: round(scores[n]["perplexity"], 2) for n in lengths}, f"{results[name]['cpu_s']} s CPU", flush=True)
        record = {
            "commands": commands,
            "machine": f"{platform.machine()} CPU, torch threads {args.threads}",
            "text": f"{args.text}: first {args.tokens_per_length} tokens, non-overlapping windows",
            "calibration": f"{args.calibration_text}: first {args.calibration_tokens} tokens",
            "total_cpu_s": round(sum(row["cpu_s"] for row in results.values()), 1),
            "results": results,
        }
        results_file.write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "perplexity.md").write_text(table(results, lengths) + "\n")
    plot(results, lengths, args.out / "perplexity.png")
    print(table(results, lengths))


if __name__ == "__main__":
    main()
