"""How fast does LoRA continued training recover a converted SmolLM2-135M, next to a control?

Every strategy starts from SmolLM2-135M-Instruct (``hf_ropeid.assets.smollm2_checkpoint()``) and
gets the same LoRA run (same data, order, seed, steps, schedule) through ``hf_ropeid.training``:

- ``control``: the original model, not converted (its step 0 is the original model itself);
- ``original_auto``: the minimal change, the original frequencies that already turn twice inside
  L = 8192 keep rotating, the rest are unrotated (19 of 32 pairs on SmolLM2);
- ``paper``: the paper's spectrum (half the pairs, periods 32 .. L/2);
- ``minimal``: spectrum "minimal" at rotary fraction 1/2. On SmolLM2 all 16 fastest original
  frequencies already turn twice inside L, so this is exactly p-RoPE 16/32 (nothing re-spaced);
- ``default``: the converter's default (spectrum "minimal", rotary fraction "auto:0.5": 22/32 pairs,
  19 original frequencies kept, the 3 slower ones re-spaced to two turns inside L).

Training text: the King James Bible (one document per book) and the CPython standard library's
top-level modules. Held-out text, from another source: Hamlet. Perplexity at several lengths is
measured on windows inside Hamlet every ``--eval-every`` steps; ``--final-lengths`` (default
4096) only before and after training, through a fresh peft load of the saved adapter.

The default budget fits a 2-core CPU in about an hour; the full version is e.g.
``--steps 400 --eval-lengths 512,1024,2048,4096 --eval-tokens 16384 --strategies control,original_auto,paper,minimal``.
Interrupted runs continue from their last checkpoint when started again with the same flags.

    python benchmarks/lora_recovery.py --out benchmarks/results/lora
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import sysconfig
import time
from pathlib import Path

STRATEGIES = {
    "control": {"convert": False},
    "original_auto": {"spectrum": "original", "rotary_fraction": "auto"},
    "paper": {"spectrum": "rope_id", "rotary_fraction": "0.5"},
    "minimal": {"spectrum": "minimal", "rotary_fraction": "0.5"},
    "default": {"spectrum": "minimal", "rotary_fraction": "auto:0.5"},
}
LABELS = {
    "control": "control: original + LoRA",
    "original_auto": "minimal change (original spectrum, 19/32)",
    "paper": "paper spectrum (1/2)",
    "minimal": "p-RoPE 16/32 ('minimal' at 1/2)",
    "default": "converter default ('minimal', 22/32)",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--strategies", default="control,original_auto,paper", help=f"comma list of {', '.join(STRATEGIES)}")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seq-length", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--lora-r", type=int, default=32)
    p.add_argument("--lora-alpha", type=float, default=64)
    p.add_argument("--no-embeddings-and-norms", action="store_true", help="LoRA only (no modules_to_save)")
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--eval-lengths", default="512,1024,2048")
    p.add_argument("--eval-tokens", type=int, default=4096, help="held-out tokens per length and evaluation")
    p.add_argument("--final-lengths", default="4096", help="lengths measured only before and after training ('' for none)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="outputs/lora_recovery", help="runs, checkpoints and converted bases (large)")
    p.add_argument("--out", default="benchmarks/results/lora", help="small results: JSON, markdown, PNG")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from finished runs")
    return p.parse_args(argv)


def training_files() -> list[str]:
    from hf_ropeid.assets import kjv_books

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = sorted(str(p) for p in stdlib.glob("*.py"))
    return [str(p) for p in kjv_books().values()] + code


def held_out_file() -> str:
    from hf_ropeid.assets import shakespeare_texts

    texts = shakespeare_texts()
    return str(next(path for title, path in texts.items() if "hamlet" in title.lower()))


def finetune_arguments(name: str, opts: argparse.Namespace, model: Path, train_files, eval_file):
    from hf_ropeid.training import FinetuneArguments

    run_dir = Path(opts.work) / "runs" / name
    resume = "latest" if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("step-*")) else None
    return FinetuneArguments.from_flat(
        model=str(model), data=list(train_files), eval_data=[eval_file], output_dir=str(run_dir),
        **STRATEGIES[name], seq_length=opts.seq_length, eval_lengths=[int(n) for n in opts.eval_lengths.split(",")],
        eval_tokens=opts.eval_tokens, lora_r=opts.lora_r, lora_alpha=opts.lora_alpha, lora_dropout=0.0,
        train_embeddings_and_norms=not opts.no_embeddings_and_norms, learning_rate=opts.learning_rate,
        warmup_steps=opts.warmup_steps, lr_scheduler="cosine", max_steps=opts.steps, batch_size=opts.batch_size,
        seed=opts.seed, eval_every=opts.eval_every, save_every=opts.eval_every, save_total_limit=1,
        resume_from=resume, force=resume is None,
    )


def final_evaluation(run_dir: Path, lengths: list[int], eval_file: str, eval_tokens: int) -> dict[str, dict[int, float]]:
    """Perplexity at ``lengths`` of the untrained base and of base + saved adapter (a fresh peft load)."""
    import torch
    from accelerate import Accelerator
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_ropeid.data import DataSource, load_held_out, window_tokens
    from hf_ropeid.training import evaluate_perplexity

    summary = json.loads((run_dir / "adapter" / "training_summary.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "adapter")
    held_out = load_held_out(DataSource((eval_file,)), tokenizer)
    windows = {n: window_tokens(held_out, n, max(1, eval_tokens // n)) for n in lengths}
    accelerator = Accelerator(cpu=True)
    base = AutoModelForCausalLM.from_pretrained(summary["base_model"], dtype=torch.float32)
    before = evaluate_perplexity(base, windows, accelerator)
    adapted = PeftModel.from_pretrained(base, run_dir / "adapter")
    after = evaluate_perplexity(adapted, windows, accelerator)
    return {"before": before, "after": after, "steps": summary["steps"]}


def collect(names: list[str], opts: argparse.Namespace) -> dict:
    from hf_ropeid.training import read_log

    results = {}
    for name in names:
        run_dir = Path(opts.work) / "runs" / name
        log = read_log(run_dir)
        evals = [r for r in log if any(k.startswith("eval_ppl@") for k in r)]
        curve = {r["step"]: {int(k.split("@")[1]): v for k, v in r.items() if k.startswith("eval_ppl@")} for r in evals}
        losses = [r for r in log if "loss" in r]
        final_path = run_dir / "final_eval.json"
        results[name] = {
            "label": LABELS[name], "strategy": STRATEGIES[name], "curve": curve,
            "losses": [(r["step"], r["loss"]) for r in losses],
            "seconds_per_step": (sum(opts.seq_length * opts.batch_size / r["tokens_per_s"] for r in losses) / len(losses))
            if losses else None,
            "final": json.loads(final_path.read_text()) if final_path.is_file() else None,
        }
    return results


def _gap(value: float, control: float) -> str:
    return f"{100 * (value / control - 1):+.1f}%"


def markdown(results: dict, opts: argparse.Namespace, command: str) -> str:
    lengths = [int(n) for n in opts.eval_lengths.split(",")]
    control = results.get("control")
    lines = [
        "# LoRA recovery of converted SmolLM2-135M-Instruct",
        "",
        (f"Runs: `python benchmarks/lora_recovery.py --strategies NAME` with the flags below, one process per strategy; "
         f"report rebuilt with `{command}`." if opts.report_only else f"Command: `{command}`"),
        "",
        f"Budget: {opts.steps} steps x {opts.batch_size} x {opts.seq_length} tokens, LoRA r={opts.lora_r} "
        f"alpha={opts.lora_alpha} on q/k/v/o/gate/up/down"
        f"{'' if opts.no_embeddings_and_norms else ' + embeddings and norms trained (modules_to_save)'}, "
        f"lr {opts.learning_rate} (warmup {opts.warmup_steps}, cosine), seed {opts.seed}. Training text: KJV "
        "(one document per book) + CPython stdlib top-level modules. Held-out: Hamlet, "
        f"{opts.eval_tokens} tokens per length (windows inside the play). Machine: 2-core CPU dev box, "
        f"{opts.threads} torch thread(s) per run, cores shared with other jobs (timings are only indicative).",
        "",
        "Perplexity on Hamlet (step 0 = before training; control step 0 = the original model). "
        "Brackets: gap to the control at the same step.",
        "",
        "| strategy | step | " + " | ".join(f"ppl@{n}" for n in lengths) + " |",
        "|---|---|" + "---|" * len(lengths),
    ]
    for name, r in results.items():
        for step, ppl in sorted(r["curve"].items()):
            cells = []
            for n in lengths:
                value = ppl.get(n)
                ref = control["curve"].get(step, {}).get(n) if control and name != "control" else None
                cells.append("-" if value is None else f"{value:.2f}" + (f" ({_gap(value, ref)})" if ref else ""))
            lines.append(f"| {r['label']} | {step} | " + " | ".join(cells) + " |")
    finals = {name: r["final"] for name, r in results.items() if r["final"]}
    if finals:
        final_lengths = sorted({int(n) for f in finals.values() for n in f["after"]})
        lines += ["", "Perplexity at the final lengths, before and after training (fresh peft load of the saved adapter):", "",
                  "| strategy | " + " | ".join(f"before ppl@{n} | after ppl@{n}" for n in final_lengths) + " |",
                  "|---|" + "---|---|" * len(final_lengths)]
        for name, f in finals.items():
            cells = [f"{f['before'][str(n)]:.2f} | {f['after'][str(n)]:.2f}" for n in final_lengths]
            lines.append(f"| {results[name]['label']} | " + " | ".join(cells) + " |")
    seconds = {r["label"]: r["seconds_per_step"] for r in results.values() if r["seconds_per_step"]}
    if seconds:
        lines += ["", "Mean seconds per training step: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()) + "."]
    return "\n".join(lines) + "\n"


def plot(results: dict, opts: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [int(n) for n in opts.eval_lengths.split(",")]
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.5 * len(lengths), 3.8), squeeze=False)
    for ax, n in zip(axes[0], lengths):
        for name, r in results.items():
            steps = sorted(s for s, ppl in r["curve"].items() if n in ppl)
            ax.plot(steps, [r["curve"][s][n] for s in steps], marker="o", label=r["label"])
        if "control" in results and 0 in results["control"]["curve"]:
            ax.axhline(results["control"]["curve"][0][n], color="gray", ls="--", lw=1, label="original model")
        ax.set_title(f"Hamlet perplexity at {n} tokens")
        ax.set_xlabel("LoRA steps")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("perplexity (log scale)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    opts = parse_args(argv)
    command = "python benchmarks/lora_recovery.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    names = [n for n in opts.strategies.split(",") if n]
    unknown = sorted(set(names) - set(STRATEGIES))
    if unknown:
        raise SystemExit(f"Unknown strategies {unknown}; accepted: {', '.join(STRATEGIES)}.")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(opts.threads)
    from hf_ropeid.assets import smollm2_checkpoint
    from hf_ropeid.training import train

    final_lengths = [int(n) for n in opts.final_lengths.split(",") if n]
    if not opts.report_only:
        model, train_files, eval_file = smollm2_checkpoint(), training_files(), held_out_file()
        for name in names:
            run_dir = Path(opts.work) / "runs" / name
            if (run_dir / "adapter").is_dir() and json.loads((run_dir / "adapter" / "training_summary.json").read_text())["steps"] >= opts.steps:
                print(f"[lora_recovery] {name}: already trained", flush=True)
            else:
                started = time.time()
                print(f"[lora_recovery] {name}: training {opts.steps} steps", flush=True)
                train(finetune_arguments(name, opts, model, train_files, eval_file))
                print(f"[lora_recovery] {name}: {time.time() - started:.0f} s", flush=True)
            if final_lengths and not (run_dir / "final_eval.json").is_file():
                final = final_evaluation(run_dir, final_lengths, eval_file, opts.eval_tokens)
                (run_dir / "final_eval.json").write_text(json.dumps(final, indent=2))
            # Report after every strategy, so that partial results are visible while the rest runs.
            write_report(names[: names.index(name) + 1], opts, command)
    write_report(names, opts, command)


def write_report(names: list[str], opts: argparse.Namespace, command: str) -> None:
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    results = collect([n for n in names if (Path(opts.work) / "runs" / n / "log.jsonl").is_file()], opts)
    payload = {"command": command, "options": vars(opts), "machine": "2-core CPU dev box", "results": results}
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=str))
    (out / "results.md").write_text(markdown(results, opts, command))
    plot(results, opts, out / "lora_recovery.png")
    print(f"[lora_recovery] report: {out / 'results.md'}", flush=True)


if __name__ == "__main__":
    main()
