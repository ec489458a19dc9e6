"""From-scratch toy models that retrieve: does far context stay *usable* at 16x the training length?

Every configuration is the same small byte-level Llama (by default 3 layers, width 64, 2 heads), pretrained with the copy-capable
curriculum of ``hf_ropeid.pretraining`` (same data order and initial weights per seed); only the positional
encoding differs. Each trained model is evaluated at 1x, 2x, 4x, 8x and 16x its training length L = 128
with the evaluation suite's own code:

- ``tail_loss``: mean loss (nats/byte) of the last quarter of held-out Hamlet windows
  (``evaluation.passes.perplexity_at_length``);
- ``retrieval``: single-key passkey exact match, ``multikey``: 4 needles, one asked
  (``evaluation.retrieval``, compact template: no instruction, so four needles fit in 128 bytes); the needle
  sits at depths 0, 0.25, 0.5 and 0.75 of the haystack (far from the question), 8 samples per depth.

Usage (one process per core; each run writes its own JSON, ``--report`` merges them):

    python benchmarks/toy_retrieval.py --variants rope,rope_id --seeds 0,1,2 --out benchmarks/results/toy_retrieval
    python benchmarks/toy_retrieval.py --report --out benchmarks/results/toy_retrieval

The report writes ``summary.json`` (means over seeds), ``summary_full.json`` (every seed, std), ``results.md``
and ``retrieval_vs_length.png`` / ``tail_loss_vs_length.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_ropeid import pretraining
from hf_ropeid.atomic import write_json_atomic, write_text_atomic

MULTIPLES = (1, 2, 4, 8, 16)
DEPTHS = (0.0, 0.25, 0.5, 0.75)
SAMPLES_PER_DEPTH = 8
TEXT_TOKENS_PER_LENGTH = 8192
SHORTEST_PERIOD = 8.0  # RoPE-ID periods 8..64 bytes at L = 128 (the paper's 32..L/2 scaled down)


# ----------------------------------------------------------------------------------------------
# Configurations


@dataclass(frozen=True)
class ModelSpec:
    """``family`` "llama" (stock LlamaForCausalLM) or "rope_id" (LlamaRopeIDForCausalLM), and its rope_parameters."""

    family: str
    rope: dict[str, Any] = field(default_factory=dict)
    two_part_rope: dict[str, Any] | None = None  # Self-Extend / ReRoPE (evaluation.two_part_rope)


EvalFn = Callable[[int, int], ModelSpec]  # (training length L, evaluation length n) -> spec


def same(spec: ModelSpec) -> EvalFn:
    return lambda L, n: spec


def rope_id(**rope: Any) -> ModelSpec:
    return ModelSpec("rope_id", {"temperature": "none", **rope})


def rescaled(rope_type: str) -> EvalFn:
    """Plain RoPE with a training-free rescaling given the oracle factor n / L (plain RoPE inside L)."""

    def spec(L: int, n: int) -> ModelSpec:
        if n <= L:
            return ModelSpec("llama")
        s = n / L
        if rope_type == "ntk":
            return ModelSpec("llama", {"rope_theta": 10_000.0 * s ** (32 / 30)})  # theta * s^(d/(d-2)), d = 32
        extra = {"original_max_position_embeddings": L} if rope_type == "yarn" else {}
        return ModelSpec("llama", {"rope_type": rope_type, "factor": s, **extra})

    return spec


def two_part(kind: str) -> EvalFn:
    """Plain RoPE with Self-Extend (W = L/4, oracle group) or ReRoPE (W = L/2): the evaluation baselines'
    settings (``evaluation.baselines.variant_rope_parameters``)."""

    def spec(L: int, n: int) -> ModelSpec:
        from transformers import LlamaConfig

        from hf_ropeid.evaluation.baselines import variant_rope_parameters

        config = LlamaConfig(max_position_embeddings=L, rope_parameters={"rope_type": "default", "rope_theta": 1e4})
        return ModelSpec("llama", two_part_rope=variant_rope_parameters(config, kind, n)["two_part_rope"])

    return spec


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    train: ModelSpec
    evals: dict[str, EvalFn]


LENGTH_LOG = {"temperature": "length_log"}
LENGTH_LOG_UNROTATED = {"temperature": "length_log", "temperature_channels": "unrotated"}
QUERY_LOG = {"temperature": "query_log"}
FAR_NORM = {"far_field": "log_count"}
WINDOW = {"rotary_window": 64}
LOCAL0 = {"spectrum": "original", "local_layers": [0], **WINDOW}  # p-RoPE + window, layer 0 a sliding window


def window_evals(**rope: Any) -> dict[str, EvalFn]:
    return {
        "": same(rope_id(**rope)),
        "+farnorm": same(rope_id(**rope, **FAR_NORM)),
        "+lenlog": same(rope_id(**rope, **LENGTH_LOG)),
        "+lenlog_nope": same(rope_id(**rope, **LENGTH_LOG_UNROTATED)),
    }


VARIANTS = {
    v.name: v
    for v in [
        Variant("rope", "RoPE, theta 1e4, all pairs", ModelSpec("llama"),
                {"": same(ModelSpec("llama")), "+yarn": rescaled("yarn"), "+ntk": rescaled("ntk"),
                 "+self_extend": two_part("self_extend"), "+rerope": two_part("rerope")}),
        Variant("rope_id", "RoPE-ID (the paper): half the pairs, periods 8..64", rope_id(),
                {"": same(rope_id()), "+temp": same(rope_id(**QUERY_LOG)),
                 "+lenlog_nope": same(rope_id(**LENGTH_LOG_UNROTATED))}),
        Variant("p_rope", "p-RoPE: half the pairs at their original frequencies", rope_id(spectrum="original"),
                {"": same(rope_id(spectrum="original")), "+temp": same(rope_id(spectrum="original", **QUERY_LOG)),
                 "+lenlog_nope": same(rope_id(spectrum="original", **LENGTH_LOG_UNROTATED))}),
        Variant("p_rope_win64", "p-RoPE; keys 64+ bytes back scored by the unrotated pairs only",
                rope_id(spectrum="original", **WINDOW), window_evals(spectrum="original", **WINDOW)),
        Variant("p_rope_win64_local0", "p-RoPE + window 64; layer 0 a sliding window (sees only the last 64 keys "
                "and the first), SWAN-style", rope_id(**LOCAL0),
                {"": same(rope_id(**LOCAL0)), "+lenlog": same(rope_id(**LOCAL0, **LENGTH_LOG))}),
        Variant("p_rope75_win64_local0", "p_rope_win64_local0 with three quarters of the pairs rotated "
                "(rotary_fraction 0.75): the far field is scored by the other quarter",
                rope_id(**LOCAL0, rotary_fraction=0.75),
                {"+lenlog": same(rope_id(**LOCAL0, rotary_fraction=0.75, **LENGTH_LOG))}),
        Variant("p_rope_win64_ssmax", "p-RoPE + window 64, trained with SSMax-style query scaling ln(p)/ln(L) "
                "at every position", rope_id(spectrum="original", temperature="ssmax", **WINDOW),
                {"": same(rope_id(spectrum="original", temperature="ssmax", **WINDOW))}),
    ]
}


# Trained by default; the SSMax-trained variant is opt-in (--variants ...,p_rope_win64_ssmax).
DEFAULT_VARIANTS = ("rope", "rope_id", "p_rope", "p_rope_win64")


def build_model(spec: ModelSpec, setup: pretraining.PretrainSetup) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ropeid import LlamaRopeIDForCausalLM, RopeIDConfig

    common = dict(pretraining.model_config_kwargs(setup), attn_implementation="sdpa")
    L = setup.training_length
    if spec.family == "rope_id":
        rope = {"rope_type": "rope_id", "rope_theta": setup.rope_theta, "training_length": L,
                "shortest_period": SHORTEST_PERIOD, **spec.rope}
        return LlamaRopeIDForCausalLM(RopeIDConfig(**common, rope_parameters=rope))
    rope = {"rope_type": "default", "rope_theta": setup.rope_theta, **spec.rope}
    config = LlamaConfig(**common, rope_parameters=rope)
    if spec.two_part_rope is not None:
        from hf_ropeid.evaluation.two_part_rope import register

        config.two_part_rope = spec.two_part_rope
        config._attn_implementation = register()
    return LlamaForCausalLM(config)


# ----------------------------------------------------------------------------------------------
# Evaluation (the evaluation suite's passes)


@dataclass
class EvalData:
    tokenizer: Any
    stream: torch.Tensor  # held-out Hamlet, byte ids
    windows: dict[int, torch.Tensor]
    retrieval: dict[str, dict[int, list]]


def eval_data(lengths: list[int], held_out: bytes) -> EvalData:
    from hf_ropeid.evaluation.retrieval import prepare_tasks
    from hf_ropeid.evaluation.text import make_windows

    tokenizer = pretraining.byte_tokenizer()
    stream = torch.tensor(list(held_out), dtype=torch.long)
    windows = {n: make_windows(stream, n, max(4, TEXT_TOKENS_PER_LENGTH // n), pretraining.BOS_ID) for n in lengths}
    tasks = prepare_tasks(tokenizer, stream, ("passkey", "multikey"), lengths, DEPTHS, samples=SAMPLES_PER_DEPTH,
                          needles=4, seed=0, template="compact")
    return EvalData(tokenizer, stream, windows, tasks)


def evaluate(model: torch.nn.Module, n: int, data: EvalData) -> dict[str, Any]:
    from hf_ropeid.evaluation.passes import perplexity_at_length
    from hf_ropeid.evaluation.retrieval import score_task

    text = perplexity_at_length(model, data.windows[n], batch_size=16, token_budget=16384, position_buckets=8)
    passkey = score_task(model, data.retrieval["passkey"][n], DEPTHS, batch_size=32, token_budget=32768)
    multikey = score_task(model, data.retrieval["multikey"][n], DEPTHS, batch_size=32, token_budget=32768)
    return {
        "tail_loss": text["tail_loss"], "loss": text["loss"],
        "retrieval": passkey["accuracy"], "multikey": multikey["accuracy"],
        "retrieval_logprob": passkey["answer_logprob"], "multikey_logprob": multikey["answer_logprob"],
        "retrieval_by_depth": {d: v["accuracy"] for d, v in passkey["by_depth"].items()},
    }


# ----------------------------------------------------------------------------------------------
# One run: train one variant with one seed, evaluate every evaluation configuration


def run(variant: Variant, seed: int, setup: pretraining.PretrainSetup, out: Path) -> Path:
    torch.set_num_threads(1)
    train_text, held_out = pretraining.shakespeare_split()
    L = setup.training_length
    lengths = [m * L for m in MULTIPLES]
    torch.manual_seed(seed)  # same initial weights for every variant (same parameter shapes)
    model = build_model(variant.train, setup)
    trained = pretraining.pretrain(model, setup, seed, train_text, progress=f"{variant.name} seed {seed}")
    if variant.name == "rope" and variant.train == ModelSpec("llama"):
        # The plain-RoPE model is also the conversion route's source: saved where it looks for it.
        folder = pretraining.save_toy_source(model, seed, setup, trained, pretraining.toy_source_folder(seed, setup))
        print(f"[rope seed {seed}] saved as the toy source {folder}", file=sys.stderr, flush=True)
    else:
        # Kept for the conversion route's from-scratch reference arm (evaluated there by `hf-ropeid eval`).
        pretraining.save_toy_source(model, seed, setup, trained, out / "models" / f"{variant.name}-seed{seed}")
    state = model.state_dict()
    data = eval_data(lengths, held_out)
    results: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    for suffix, spec_for in variant.evals.items():
        name = variant.name + suffix
        results[name] = {}
        for m, n in zip(MULTIPLES, lengths):
            evaluated = build_model(spec_for(L, n), setup)
            evaluated.load_state_dict(state)
            evaluated.eval()
            results[name][str(m)] = evaluate(evaluated, n, data)
        one = results[name]
        print(f"[{name} seed {seed}] " + "  ".join(
            f"{m}x: loss {one[str(m)]['tail_loss']:.3f} key {one[str(m)]['retrieval']:.2f} "
            f"multi {one[str(m)]['multikey']:.2f}" for m in MULTIPLES), file=sys.stderr, flush=True)
    record = {
        "variant": variant.name, "description": variant.description, "seed": seed,
        "setup": asdict(setup), "pretraining_tokens": setup.tokens, "training": trained,
        "eval_seconds": time.perf_counter() - start, "results": results,
        "machine": f"{torch.get_num_threads()} thread(s), torch {torch.__version__}",
    }
    path = out / "runs" / f"{variant.name}-seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
    return path


# ----------------------------------------------------------------------------------------------
# Report


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def report(out: Path) -> dict[str, Any]:
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    if not runs:
        raise SystemExit(f"error: no runs in {out / 'runs'}; train some first (see --help).")
    per_config: dict[str, dict[int, dict]] = {}
    for record in runs:
        for name, by_multiple in record["results"].items():
            per_config.setdefault(name, {})[record["seed"]] = by_multiple
    summary: dict[str, Any] = {"configurations": {}}
    full: dict[str, Any] = {"configurations": {}, "depths": DEPTHS, "samples_per_depth": SAMPLES_PER_DEPTH}
    for name, by_seed in sorted(per_config.items()):
        seeds = sorted(by_seed)
        row: dict[str, Any] = {"seeds": len(seeds)}
        full_row: dict[str, Any] = {"seeds": seeds}
        for m in MULTIPLES:
            cell, full_cell = {}, {}
            for metric in ("tail_loss", "retrieval", "multikey"):
                values = [by_seed[s][str(m)][metric] for s in seeds]
                mean, std = _mean_std(values)
                cell[metric] = mean
                full_cell[metric] = {"mean": mean, "std": std, "per_seed": values}
            depths = [by_seed[s][str(m)].get("retrieval_by_depth") for s in seeds]
            if all(depths):
                full_cell["retrieval_by_depth"] = {d: statistics.fmean(x[d] for x in depths) for d in depths[0]}
            row[str(m)] = cell
            full_row[str(m)] = full_cell
        summary["configurations"][name] = row
        full["configurations"][name] = full_row
    full["seeds"] = sorted({r["seed"] for r in runs})
    setup = runs[0]["setup"]
    summary["training_length"] = full["training_length"] = setup["training_length"]
    if {"layers", "width", "head_dim"} <= set(setup):
        full["shape"] = (f"{setup['layers']}-layer, width-{setup['width']}, "
                         f"{setup['width'] // setup['head_dim']}-head (head_dim {setup['head_dim']})")
    summary["pretraining_tokens"] = full["pretraining_tokens"] = runs[0]["pretraining_tokens"]
    summary["seconds_per_step"] = full["seconds_per_step"] = statistics.fmean(
        r["training"]["seconds_per_step"] for r in runs)
    full["goal"] = goal_check(per_config)
    write_json_atomic(out / "summary.json", summary)
    write_json_atomic(out / "summary_full.json", full)
    write_text_atomic(out / "results.md", markdown(full))
    plot(full, out)
    return summary


def goal_check(per_config: dict[str, dict[int, dict]]) -> dict[str, Any]:
    """The issue's goal, seed by seed against the same seed's RoPE and oracle YaRN.

    Per configuration: 1x retrieval >= 0.9; 16x retrieval >= 0.9 x its 1x; 16x tail loss within 5% of 1x;
    better than RoPE + oracle YaRN on retrieval and tail loss at every length above L; 1x tail loss at most
    0.005 nats above RoPE's. ``met`` only if every seed passes every part.
    """
    rope, yarn = per_config.get("rope", {}), per_config.get("rope+yarn", {})
    above = [str(m) for m in MULTIPLES if m > 1]
    out: dict[str, Any] = {}
    for name, by_seed in per_config.items():
        seeds = [s for s in sorted(by_seed) if s in rope and s in yarn]
        parts: dict[str, list[bool]] = {k: [] for k in ("retrieval_1x", "retrieval_kept_16x", "tail_flat_16x",
                                                        "beats_yarn", "inside_L_vs_rope")}
        for s in seeds:
            row = by_seed[s]
            parts["retrieval_1x"].append(row["1"]["retrieval"] >= 0.9)
            parts["retrieval_kept_16x"].append(row["1"]["retrieval"] > 0
                                               and row["16"]["retrieval"] >= 0.9 * row["1"]["retrieval"])
            parts["tail_flat_16x"].append(row["16"]["tail_loss"] <= 1.05 * row["1"]["tail_loss"])
            parts["beats_yarn"].append(all(row[m]["retrieval"] > yarn[s][m]["retrieval"]
                                           and row[m]["tail_loss"] < yarn[s][m]["tail_loss"] for m in above))
            parts["inside_L_vs_rope"].append(row["1"]["tail_loss"] - rope[s]["1"]["tail_loss"] <= 0.005)
        out[name] = {"seeds": seeds, **{k: f"{sum(v)}/{len(v)}" for k, v in parts.items()},
                     "met": bool(seeds) and all(all(v) for v in parts.values())}
    return out


def markdown(full: dict[str, Any]) -> str:
    L = full["training_length"]
    shape = full.get("shape", "small")
    lines = [f"Toy retrieval: {shape} byte-level Llamas, L = {L}, mean ± std over seeds "
             f"({full['pretraining_tokens'] / 1e6:.2f}M pretraining tokens each).", ""]
    for metric, title, digits in (("tail_loss", "tail loss (nats/byte, lower is better)", 3),
                                  ("retrieval", "single-key (passkey) exact match", 2),
                                  ("multikey", "multi-key (4 needles) exact match", 2)):
        lines += [f"**{title}**", "", "| configuration | seeds | " + " | ".join(f"{m}x ({m * L})" for m in MULTIPLES)
                  + " |", "|---|---|" + "---|" * len(MULTIPLES)]
        for name, row in full["configurations"].items():
            cells = [f"{row[str(m)][metric]['mean']:.{digits}f} ± {row[str(m)][metric]['std']:.{digits}f}"
                     for m in MULTIPLES]
            lines.append(f"| {name} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["**single-key exact match, seed by seed** (1x / 2x / 4x / 8x / 16x): a seed whose model does not "
              "retrieve inside L says nothing about retrieval past it", "",
              "| configuration | " + " | ".join(f"seed {s}" for s in full["seeds"]) + " |",
              "|---|" + "---|" * len(full["seeds"])]
    for name, row in full["configurations"].items():
        cells = []
        for s in full["seeds"]:
            if s in row["seeds"]:
                i = row["seeds"].index(s)
                cells.append(" / ".join(f"{row[str(m)]['retrieval']['per_seed'][i]:.2f}" for m in MULTIPLES))
            else:
                cells.append("-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    longest = str(MULTIPLES[-1])
    with_depths = {name: row[longest]["retrieval_by_depth"] for name, row in full["configurations"].items()
                   if "retrieval_by_depth" in row[longest]}
    if with_depths:
        depths = list(next(iter(with_depths.values())))
        lines += [f"**single-key exact match at {longest}x by needle depth** (mean of seeds; depth 0 = the needle "
                  "right after BOS, 0.75 = three quarters in, nearest the question)", "",
                  "| configuration | " + " | ".join(f"depth {d}" for d in depths) + " |", "|---|" + "---|" * len(depths)]
        for name, by_depth in with_depths.items():
            lines.append(f"| {name} | " + " | ".join(f"{by_depth[d]:.2f}" for d in depths) + " |")
        lines.append("")
    goal = full.get("goal") or {}
    if goal:
        keys = ("retrieval_1x", "retrieval_kept_16x", "tail_flat_16x", "beats_yarn", "inside_L_vs_rope")
        lines += ["**Goal check, seeds passing each part** (1x retrieval >= 0.9; 16x retrieval >= 0.9 x 1x; 16x tail "
                  "loss <= 1.05 x 1x; beats the same seed's oracle YaRN on both metrics at every length above L; 1x "
                  "tail loss <= RoPE's + 0.005)", "",
                  "| configuration | " + " | ".join(keys) + " | met |", "|---|" + "---|" * (len(keys) + 1)]
        for name, row in goal.items():
            lines.append(f"| {name} | " + " | ".join(row[k] for k in keys) + f" | {'yes' if row['met'] else 'no'} |")
        lines.append("")
    return "\n".join(lines)


def plot(full: dict[str, Any], out: Path) -> None:
    from hf_ropeid.evaluation import plots

    L = full["training_length"]
    lengths = [m * L for m in MULTIPLES]
    names = list(full["configurations"])
    colors = plots.color_map(names)
    for metric, ylabel, filename in (("retrieval", "passkey exact match", "retrieval_vs_length.png"),
                                     ("tail_loss", "tail loss (nats/byte)", "tail_loss_vs_length.png"),
                                     ("multikey", "multi-key exact match", "multikey_vs_length.png")):
        series = {name: (lengths, [full["configurations"][name][str(m)][metric]["mean"] for m in MULTIPLES])
                  for name in names}
        plots.line_plot(out / filename, series, xlabel="context length (bytes)", ylabel=ylabel, log_x=True,
                        vline=L, colors=colors, title=f"Toy models, L = {L}: {ylabel} vs length (mean of seeds)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, of: {', '.join(VARIANTS)} (default: {', '.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/toy_retrieval"))
    parser.add_argument("--report", action="store_true", help="merge the runs under OUT/runs into the summary")
    parser.add_argument("--stage-steps", default=None,
                        help="comma-separated steps of each curriculum stage (default: pretraining.DEFAULT_STAGES)")
    parser.add_argument("--curriculum", default="default", choices=list(pretraining.CURRICULA),
                        help="pretraining stages (pretraining.CURRICULA; default: %(default)s)")
    shape = pretraining.PretrainSetup()
    parser.add_argument("--layers", type=int, default=shape.layers, help=f"(default: {shape.layers})")
    parser.add_argument("--width", type=int, default=shape.width, help=f"hidden size (default: {shape.width})")
    parser.add_argument("--head-dim", type=int, default=shape.head_dim,
                        help=f"heads = width / head_dim (default: {shape.head_dim})")
    args = parser.parse_args(argv)
    if args.report:
        report(args.out)
        print(f"wrote {args.out / 'summary.json'}")
        return
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"error: unknown variant(s) {unknown}; accepted: {', '.join(VARIANTS)}")
    if args.width % args.head_dim:
        raise SystemExit(f"error: --width {args.width} is not a multiple of --head-dim {args.head_dim}")
    setup = pretraining.PretrainSetup(layers=args.layers, width=args.width, head_dim=args.head_dim,
                                      stages=pretraining.CURRICULA[args.curriculum])
    if args.stage_steps:
        from dataclasses import replace

        steps = [int(s) for s in args.stage_steps.split(",")]
        if len(steps) != len(setup.stages):
            raise SystemExit(f"error: --stage-steps needs {len(setup.stages)} numbers, got {args.stage_steps!r}")
        setup = replace(setup, stages=tuple(replace(stage, steps=n) for stage, n in zip(setup.stages, steps)))
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in args.variants.split(","):
            print(f"wrote {run(VARIANTS[name], seed, setup, args.out)}")


if __name__ == "__main__":
    main()
