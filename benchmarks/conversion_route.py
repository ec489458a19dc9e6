"""The conversion route end to end, with the project's own commands: a trained RoPE checkpoint converted,
adapted with LoRA at its training length, and evaluated at 1x..16x that length against the alternatives.

The source is ``hf_ropeid.pretraining.toy_source_checkpoint(seed)``: a byte-level Llama with plain RoPE,
pretrained from scratch at L = 128 bytes with the copy-capable curriculum, so that it retrieves inside L
(SmolLM2 cannot serve here: it was trained to 8192 tokens, so at 16x a short L it would still be inside its
own training length, and nothing at 16x its real L fits a CPU). Every arm gets the same adaptation budget
(the same LoRA steps, batch and data at L) and is evaluated by ``hf-ropeid eval`` on held-out Hamlet
(perplexity, tail perplexity) and on passkey / multi-key retrieval (compact template, needles at depths
0-0.75, 8 samples per depth and task).

Arms:
- ``source``, ``pi_oracle``, ``ntk_oracle``, ``yarn_oracle``: the source as it is and its training-free
  rescalings with the oracle factor n / L (``hf-ropeid eval`` baselines);
- ``yarn_lora``: YaRN with factor 16 + LoRA (the standard context-extension recipe);
- ``rope_id_lora``: ``hf-ropeid convert`` with its defaults (the far-context recipe: window, length-log temperature,
  layer 0 a sliding window) + LoRA;
- ``portable_lora``: ``convert --recipe portable`` (no window; the default until this route measured it) + LoRA;
- ``rope_id_paper_lora``: ``--recipe paper``, the paper's spectrum (periods 8..64) + LoRA;
- ``global_layers_lora``: the far-context recipe with every layer global (``--local-layers ""``; the default until
  round 3 measured layer 0 as a sliding window) + LoRA;
- ``ssmax_lora``: ``global_layers_lora`` with ``--temperature ssmax`` (the query scale ln(p)/ln(L) at every position,
  learnt by the LoRA) + LoRA;
- ``p_rope_window_lora``: half the pairs at their original frequencies, ``rotary_window = L/2`` + LoRA,
  evaluated without a temperature, with the length-log temperature on the unrotated channels only
  (``..._lenlog_nope``), on every channel (``..._lenlog``), and with the far-field normalisation
  (``..._farnorm``): the toy study's configurations;
- ``self_extend_oracle``, ``rerope``: the training-free extensions that keep the source exact inside a window;
- ``rope_id_scratch``: the toy study's RoPE-ID model pretrained from scratch (the reference);
Runs recorded before the default changed are reported under today's names (``arms_under_the_current_default``).

``--source smollm2 --training-length 256`` runs the same route on SmolLM2-135M-Instruct with a pretended
training length (what the route does to a model that retrieves well, adapted at a short length). It cannot
show extrapolation of the source or of YaRN: 16x 256 = 4096 is inside SmolLM2's own 8192 tokens, so the
``source`` arm is an upper reference there, not a baseline that breaks.

Usage (minutes per seed on one core; each step is skipped when its output exists):

    python benchmarks/conversion_route.py --seeds 0,1,2 --out benchmarks/results/conversion_route
    python benchmarks/conversion_route.py --report --out benchmarks/results/conversion_route
    python benchmarks/conversion_route.py --source smollm2 --training-length 256 --seeds 0 \
        --out benchmarks/results/conversion_route_smollm2
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_ropeid import pretraining
from hf_ropeid.atomic import write_json_atomic, write_text_atomic
from hf_ropeid.parameters import DEFAULT_RECIPE

MULTIPLES = (1, 2, 4, 8, 16)
LORA = dict(steps=300, batch=16, learning_rate=2e-3, r=16)  # toy: 300 x 16 x 128 = 0.61M tokens
# Training-free baselines of the source, evaluated by `hf-ropeid eval --baselines` (arm name: variant).
SOURCE_BASELINES = {"source": "rope", "pi_oracle": "linear", "ntk_oracle": "ntk", "yarn_oracle": "yarn",
                    "self_extend_oracle": "self_extend", "rerope": "rerope"}
EVAL_ARGS = ["--retrieval-template", "compact", "--depths", "0,0.25,0.5,0.75", "--samples", "8", "--needles", "4",
             "--no-diagnostics", "--tokens-per-length", "8192", "--batch-size", "16", "--position-buckets", "8"]
# SmolLM2 (135M): a CPU budget. 60 x 4 x 256 = 61k tokens of LoRA; 1 passkey per depth; one text window at 16x.
SMOLLM2_LORA = dict(steps=60, batch=4, learning_rate=5e-4, r=16)
SMOLLM2_EVAL_ARGS = ["--tasks", "passkey", "--depths", "0,0.25,0.5,0.75", "--samples", "1", "--no-diagnostics",
                     "--batch-size", "4", "--token-budget", "8192", "--position-buckets", "8"]
LORA_DATA_WINDOWS = 6000


@dataclass(frozen=True)
class RouteSettings:
    """What one run of the route uses: the source, its L, the lengths, the shared LoRA budget, eval options."""

    source_kind: str  # "toy", "smollm2", or a local Llama folder
    training_length: int
    multiples: tuple[int, ...]
    lora: dict[str, Any]
    eval_args: list[str]
    small: bool  # a CPU budget on a large source: fewer arms

    @property
    def budget_tokens(self) -> int:
        return self.lora["steps"] * self.lora["batch"] * self.training_length


def route_settings(source_kind: str, training_length: int | None, multiples: tuple[int, ...],
                   lora_steps: int | None = None, lora_batch: int | None = None) -> RouteSettings:
    overrides = {k: v for k, v in (("steps", lora_steps), ("batch", lora_batch)) if v is not None}
    if source_kind == "toy":
        L = pretraining.PretrainSetup().training_length
        return RouteSettings("toy", L, multiples, {**LORA, **overrides}, EVAL_ARGS, small=False)
    if source_kind == "smollm2":
        L = training_length or 256
        return RouteSettings("smollm2", L, multiples, {**SMOLLM2_LORA, **overrides},
                             SMOLLM2_EVAL_ARGS + ["--tokens-per-length", str(L * multiples[-1])], small=True)
    L = training_length or 32
    return RouteSettings(source_kind, L, multiples, {**LORA, **overrides}, SMOLLM2_EVAL_ARGS + [
        "--tokens-per-length", str(L * multiples[-1]), "--retrieval-template", "compact"], small=True)


def hf_ropeid(*args: str, log: Path) -> None:
    """Runs one ``hf-ropeid`` command (the installed CLI, as a user would), output appended to ``log``."""
    command = [sys.executable, "-m", "hf_ropeid.cli", *args]
    with log.open("a") as handle:
        handle.write(f"\n$ hf-ropeid {' '.join(args)}\n")
        handle.flush()
        start = time.perf_counter()
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
        handle.write(f"[exit {result.returncode} after {time.perf_counter() - start:.0f} s]\n")
    if result.returncode != 0:
        raise SystemExit(f"error: `hf-ropeid {' '.join(args)}` failed; see {log}")


def lora_data(work: Path, setup: pretraining.PretrainSetup) -> Path:
    """The adaptation data: training windows of the pretraining's last stage (text, recall, copy), one JSON
    record each.

    Each window is its own document of L - 2 bytes, so that with the tokenizer's BOS and the packer's EOS every
    packed block of L tokens is exactly one window starting with BOS, as in pretraining. (One text file of
    windows packed into blocks that do not start with BOS took the source's passkey from 88% to 6% at 1x after
    LoRA on the unchanged source: the toy attends to BOS as its sink.)
    """
    path = work / "lora_data.jsonl"
    if path.exists():
        return path
    train_text, _ = pretraining.shakespeare_split()
    stage = setup.stages[-1]
    rng = random.Random(12345)
    records = []
    for _ in range(LORA_DATA_WINDOWS):
        window = pretraining.training_window(rng, train_text, stage.length - 2, stage.mixture)[0]
        # Bytes >= 128 would become two tokens and shift every later block off its window.
        records.append(json.dumps({"text": bytes(b if b < 128 else ord("?") for b in window).decode("ascii")}))
    write_text_atomic(path, "\n".join(records) + "\n")
    return path


def held_out_text(work: Path) -> Path:
    path = work / "hamlet.txt"
    if not path.exists():
        write_text_atomic(path, pretraining.shakespeare_split()[1])
    return path


def yarn_source(source: Path, target: Path, factor: float, L: int) -> Path:
    """A copy of the source whose config applies YaRN with ``factor`` (a Llama folder, no hf-ropeid needed)."""
    if target.exists():
        return target
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    config = json.loads((staging / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": config["rope_parameters"]["rope_theta"],
                                 "factor": factor, "original_max_position_embeddings": L}
    config["max_position_embeddings"] = int(L * factor)
    (staging / "config.json").write_text(json.dumps(config, indent=2))
    staging.rename(target)
    return target


def adapt(model: Path, name: str, work: Path, data: Path, settings: RouteSettings, seed: int, log: Path,
          extra: list[str], held_out: Path | None = None) -> Path:
    """``hf-ropeid finetune`` (LoRA at L, the shared budget) then ``hf-ropeid merge``; returns the merged folder."""
    merged = work / f"{name}-merged"
    if merged.exists():
        return merged
    run, L, lora = work / f"{name}-lora", settings.training_length, settings.lora
    hf_ropeid("finetune", "--model", str(model), "--output-dir", str(run), "--data", str(data), "--seq-length", str(L),
              "--max-steps", str(lora["steps"]), "--batch-size", str(lora["batch"]),
              "--learning-rate", str(lora["learning_rate"]), "--lora-r", str(lora["r"]), "--lora-dropout", "0",
              "--warmup-steps", "20", "--seed", str(seed), "--eval-data", str(held_out or data), "--eval-tokens", str(4 * L),
              "--no-eval-at-start",
              "--force", *extra, log=log)
    hf_ropeid("merge", str(run / "adapter"), str(merged), log=log)
    return merged


def evaluate(model: Path, name: str, work: Path, text: Path, settings: RouteSettings, baselines: str,
             log: Path) -> dict[str, Any]:
    out = work / f"eval-{name}"
    L = settings.training_length
    if not (out / "results.json").exists():
        lengths = ",".join(str(m * L) for m in settings.multiples)
        hf_ropeid("eval", str(model), "--out", str(out), "--lengths", lengths, "--baselines", baselines,
                  "--training-length", str(L), "--text", str(text), "--force", *settings.eval_args, log=log)
    return json.loads((out / "results.json").read_text())


def cells(results: dict[str, Any], variant: str, settings: RouteSettings) -> dict[str, Any]:
    """``{multiple: {ppl, tail_ppl, retrieval, multikey}}`` of one evaluated variant."""
    out, L = {}, settings.training_length
    for m in settings.multiples:
        n = str(m * L)
        ppl = results["perplexity"][variant][n]
        out[str(m)] = {
            "ppl": ppl["perplexity"], "tail_ppl": ppl["tail_perplexity"],
            "retrieval": results["retrieval"]["passkey"][variant][n]["accuracy"],
            "multikey": results["retrieval"].get("multikey", {}).get(variant, {}).get(n, {}).get("accuracy"),
        }
    return out


def smollm2_data(work: Path) -> Path:
    """SmolLM2's adaptation data: Shakespeare's works but Hamlet (held out), as one text file."""
    path = work / "shakespeare_train.txt"
    if not path.exists():
        write_text_atomic(path, pretraining.shakespeare_split()[0])
    return path


def conversion_arms(L: int, small: bool) -> dict[str, list[str]]:
    """The converted arms: name -> ``hf-ropeid convert`` options (then the shared LoRA budget)."""
    conversions = {
        "rope_id_lora": [],  # the converter's defaults (the far-context recipe since it measured best here)
        # The far-context recipe before layer 0 became a sliding window (round 3): every layer global.
        "global_layers_lora": ["--local-layers", ""],
        # The default with three quarters of the pairs rotated (from scratch it cut the window's cost inside L).
        "fraction75_lora": ["--rotary-fraction", "0.75"],
        "portable_lora": ["--recipe", "portable"],  # the default before: no window, every kernel runs it
        "rope_id_paper_lora": ["--recipe", "paper", "--shortest-period", str(max(2, L // 16))],
        # The far-context recipe with Scalable-Softmax's query scale ln(p)/ln(L) at every position, inside L too,
        # so the LoRA at L learns it (from scratch it kept passkey best past L: RESULTS §6).
        "ssmax_lora": ["--temperature", "ssmax", "--local-layers", ""],
        "p_rope_window_lora": ["--spectrum", "original", "--rotary-fraction", "0.5", "--rotary-window", str(L // 2),
                               "--temperature", "length_log", "--temperature-channels", "unrotated", "--local-layers", ""],
    }
    if small:  # a CPU budget on a real model: the converter's default (far-context) and the portable recipe
        # (the paper's spectrum measured 4x the source's perplexity on SmolLM2 without training)
        conversions = {"rope_id_lora": conversions["rope_id_lora"], "portable_lora": conversions["portable_lora"]}
    return conversions


def arm_names(settings: RouteSettings) -> list[str]:
    """The arms ``--arms`` can select for ``settings`` (the source and the training-free baselines always run)."""
    scratch = ["rope_id_scratch"] if settings.source_kind == "toy" else []
    return ["yarn_lora", *conversion_arms(settings.training_length, settings.small), *scratch]


def run_seed(seed: int, out: Path, settings: RouteSettings, scratch_models: Path | None = None,
             arms_to_run: set[str] | None = None) -> Path:
    """One seed of every arm (or of ``arms_to_run``, beside the source and the training-free baselines).
    ``scratch_models``: the toy study's saved models (its ``models/`` folder), for the from-scratch RoPE-ID
    reference arm."""
    work = out / "work" / f"seed{seed}"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    L, small = settings.training_length, settings.small
    text = held_out_text(out / "work")
    if settings.source_kind == "toy":
        setup = pretraining.PretrainSetup()
        source = pretraining.toy_source_checkpoint(seed, setup)
        data = lora_data(out / "work", setup)
        source_tokens = json.loads((source / "pretraining.json").read_text())["tokens"]
    elif settings.source_kind == "smollm2":
        from hf_ropeid.assets import smollm2_checkpoint

        source, data = smollm2_checkpoint(), smollm2_data(out / "work")
        source_tokens = 2_000_000_000_000  # SmolLM2-135M's pretraining: 2T tokens (its model card)
    else:
        source, data, source_tokens = Path(settings.source_kind), smollm2_data(out / "work"), 0
    budget = settings.budget_tokens
    selected = set(arm_names(settings)) if arms_to_run is None else arms_to_run
    arms: dict[str, Any] = {}

    if small:  # a CPU budget: the source and YaRN only
        baselines = {"source": "rope", "yarn_oracle": "yarn"}
    else:
        baselines = SOURCE_BASELINES
    results = evaluate(source, "source", work, text, settings, ",".join(baselines.values()), log)
    for arm, variant in baselines.items():
        arms[arm] = {"budget_tokens": 0, **cells(results, variant, settings)}

    if "yarn_lora" in selected:
        factor = float(settings.multiples[-1])
        yarn = adapt(yarn_source(source, work / "yarn16-source", factor, L), "yarn_lora", work, data, settings, seed,
                     log, ["--no-convert"], text)
        arms["yarn_lora"] = {"budget_tokens": budget,
                             **cells(evaluate(yarn, "yarn_lora", work, text, settings, "rope", log), "rope", settings)}

    conversions = {arm: options for arm, options in conversion_arms(L, small).items() if arm in selected}
    for arm, options in conversions.items():
        converted = work / f"{arm}-converted"
        if not converted.exists():
            hf_ropeid("convert", str(source), str(converted), "--training-length", str(L), "--no-verify", *options,
                      log=log)
        merged = adapt(converted, arm, work, data, settings, seed, log, [], text)
        results = evaluate(merged, arm, work, text, settings, "rope_id" if small else "rope_id,rope_id_no_temp", log)
        if small:  # with the temperature only (query_log; length_log on the NoPE channels for the window arm)
            arms[arm + ("_lenlog_nope" if arm == "p_rope_window_lora" else "")] = {
                "budget_tokens": budget, **cells(results, "rope_id", settings)}
        elif arm == "p_rope_window_lora":
            arms[arm] = {"budget_tokens": budget, **cells(results, "rope_id_no_temp", settings)}
            arms[arm + "_lenlog_nope"] = {"budget_tokens": budget, **cells(results, "rope_id", settings)}
            # Inference-time settings of the same merged weights (both are exactly 1 / 0 inside L, so LoRA
            # training is the same with or without them): the toy study's far-field normalisation and its
            # length-log temperature on every channel, the one that kept retrieval far past L there.
            for suffix, rope in (("_farnorm", {"far_field": "log_count", "temperature": "none"}),
                                 ("_lenlog", {"temperature": "length_log", "temperature_channels": "all"})):
                variant_folder = work / f"{arm}-{suffix[1:]}"
                if not variant_folder.exists():
                    shutil.copytree(merged, variant_folder)
                    config = json.loads((variant_folder / "config.json").read_text())
                    config["rope_parameters"].update(rope)
                    (variant_folder / "config.json").write_text(json.dumps(config, indent=2))
                variant_results = evaluate(variant_folder, arm + suffix, work, text, settings, "rope_id", log)
                arms[arm + suffix] = {"budget_tokens": budget, **cells(variant_results, "rope_id", settings)}
        else:
            arms[arm] = {"budget_tokens": budget, **cells(results, "rope_id", settings)}
            arms[arm + "_no_temp"] = {"budget_tokens": budget, **cells(results, "rope_id_no_temp", settings)}

    scratch = (scratch_models / f"rope_id-seed{seed}") if scratch_models is not None and "rope_id_scratch" in selected \
        else None
    evaluated_before = (work / "eval-rope_id_scratch" / "results.json").exists()
    if scratch is not None and ((scratch / "config.json").exists() or evaluated_before):
        # The reference: RoPE-ID pretrained from scratch with the source's recipe and token count (the source
        # plus this LoRA budget would be ~5% more tokens), evaluated as itself. (Its evaluation is kept when the
        # toy study's models, which are not committed, are gone.)
        results = evaluate(scratch, "rope_id_scratch", work, text, settings, "rope_id,rope_id_no_temp", log)
        scratch_tokens = json.loads((scratch / "pretraining.json").read_text())["tokens"] \
            if (scratch / "pretraining.json").exists() else source_tokens
        arms["rope_id_scratch"] = {"budget_tokens": scratch_tokens, **cells(results, "rope_id", settings)}
        arms["rope_id_scratch_no_temp"] = {"budget_tokens": scratch_tokens,
                                           **cells(results, "rope_id_no_temp", settings)}

    record = {"seed": seed, "default_recipe": DEFAULT_RECIPE, "training_length": L, "source": str(source),
              "source_kind": settings.source_kind,
              "source_pretraining": source_tokens, "lora": settings.lora, "eval_args": settings.eval_args,
              "multiples": list(settings.multiples), "arms": arms}
    path = out / "runs" / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
    return path


def arms_under_the_current_default(run: dict[str, Any]) -> dict[str, Any]:
    """A run recorded before ``convert`` defaulted to the far-context recipe, with today's arm names.

    Its ``rope_id_lora`` arms were the old default, which is ``--recipe portable`` now. The new default's arm
    is the arm that was converted, adapted and evaluated with exactly the far-context settings:
    ``far_context_lora`` (SmolLM2 and local sources) or ``p_rope_window_lora_lenlog`` (toy: converted with the
    window and the length-log temperature, which is 1 inside L, so LoRA at L trained the same weights, then
    evaluated with the temperature on every channel).
    """
    if "default_recipe" in run:
        return run
    arms = dict(run["arms"])
    for suffix in ("", "_no_temp"):
        if f"rope_id_lora{suffix}" in arms:
            arms[f"portable_lora{suffix}"] = arms.pop(f"rope_id_lora{suffix}")
    same = "far_context_lora" if "far_context_lora" in arms else "p_rope_window_lora_lenlog"
    if same in arms:
        arms["rope_id_lora"] = arms.pop(same) if same == "far_context_lora" else arms[same]
    return {**run, "arms": arms}


def report(out: Path) -> dict[str, Any]:
    runs = [arms_under_the_current_default(json.loads(p.read_text()))
            for p in sorted((out / "runs").glob("seed*.json"))]
    if not runs:
        raise SystemExit(f"error: no runs in {out / 'runs'}; run some seeds first (see --help).")
    L = runs[0]["training_length"]
    multiples = tuple(runs[0].get("multiples", MULTIPLES))
    summary: dict[str, Any] = {"training_length": L, "multiples": list(multiples), "seeds": [r["seed"] for r in runs],
                               "source": runs[0].get("source_kind", "toy"),
                               "source_pretraining_tokens": runs[0]["source_pretraining"], "arms": {}}
    full: dict[str, Any] = {**summary, "arms": {}}
    arm_names = list(dict.fromkeys(arm for r in runs for arm in r["arms"]))
    for arm in arm_names:
        having = [r for r in runs if arm in r["arms"]]  # e.g. the scratch reference exists only where trained
        row = {"budget_tokens": having[0]["arms"][arm]["budget_tokens"], "seeds": [r["seed"] for r in having]}
        full_row = dict(row)
        for m in multiples:
            cell, full_cell = {}, {}
            for metric in ("ppl", "tail_ppl", "retrieval", "multikey"):
                values = [r["arms"][arm][str(m)][metric] for r in having if r["arms"][arm][str(m)][metric] is not None]
                mean = statistics.fmean(values) if values else None
                cell[metric] = mean
                full_cell[metric] = {"mean": mean, "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                                     "per_seed": values}
            row[str(m)] = cell
            full_row[str(m)] = full_cell
        summary["arms"][arm] = row
        full["arms"][arm] = full_row
    write_json_atomic(out / "summary.json", summary)
    write_json_atomic(out / "summary_full.json", full)
    write_text_atomic(out / "results.md", markdown(full))
    plot(full, out)
    return summary


def markdown(full: dict[str, Any]) -> str:
    L, multiples = full["training_length"], full["multiples"]
    lines = [f"Conversion route, L = {L} ({full['source_pretraining_tokens'] / 1e6:,.1f}M source pretraining "
             f"tokens), seeds {full['seeds']}: mean ± std.", ""]
    for metric, title, digits in (("tail_ppl", "tail perplexity (last quarter of each window)", 2),
                                  ("ppl", "perplexity", 2), ("retrieval", "passkey exact match", 2),
                                  ("multikey", "multi-key (4 needles) exact match", 2)):
        lines += [f"**{title}**", "", "| arm | training tokens | " + " | ".join(f"{m}x" for m in multiples) + " |",
                  "|---|---|" + "---|" * len(multiples)]
        for arm, row in full["arms"].items():
            values = []
            for m in multiples:
                c = row[str(m)][metric]
                values.append("-" if c["mean"] is None else f"{c['mean']:.{digits}f} ± {c['std']:.{digits}f}")
            lines.append(f"| {arm} ({len(row['seeds'])} seeds) | {row['budget_tokens']:,} | " + " | ".join(values) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(full: dict[str, Any], out: Path) -> None:
    from hf_ropeid.evaluation import plots

    L = full["training_length"]
    lengths = [m * L for m in full["multiples"]]
    names = list(full["arms"])
    colors = plots.color_map(names)
    for metric, ylabel, log_y in (("tail_ppl", "tail perplexity", True), ("retrieval", "passkey exact match", False),
                                  ("multikey", "multi-key exact match", False)):
        series = {name: (lengths, [full["arms"][name][str(m)][metric]["mean"] for m in full["multiples"]])
                  for name in names}
        unit = "bytes" if full.get("source", "toy") == "toy" else "tokens"
        plots.line_plot(out / f"{metric}_vs_length.png", series, xlabel=f"context length ({unit})", ylabel=ylabel,
                        log_x=True, log_y=log_y, vline=L, colors=colors,
                        title=f"Conversion route, {full.get('source', 'toy')} source (L = {L}): {ylabel}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/conversion_route"))
    parser.add_argument("--report", action="store_true", help="merge OUT/runs into summary.json, table and plots")
    parser.add_argument("--source", default="toy", help="toy | smollm2 | a local Llama folder (dry runs)")
    parser.add_argument("--training-length", type=int, default=None, help="L for --source smollm2 (256)")
    parser.add_argument("--multiples", default="1,2,4,8,16", help="lengths as multiples of L")
    parser.add_argument("--lora-steps", type=int, default=None, help="override the LoRA steps (same for every arm)")
    parser.add_argument("--lora-batch", type=int, default=None, help="override the LoRA batch (same for every arm)")
    parser.add_argument("--scratch-models", type=Path, default=Path("benchmarks/results/toy_retrieval/models"),
                        help="the toy study's saved models: the from-scratch RoPE-ID reference arm (toy source)")
    parser.add_argument("--arms", default=None,
                        help="only these arms, comma-separated, beside the source and the training-free baselines "
                             "(default: all; an unknown name lists the accepted ones); use a separate --out")
    args = parser.parse_args(argv)
    multiples = tuple(int(m) for m in args.multiples.split(","))
    settings = route_settings(args.source, args.training_length, multiples, args.lora_steps, args.lora_batch)
    arms_to_run = None
    if args.arms is not None:
        arms_to_run = {a for a in args.arms.split(",") if a}
        accepted = arm_names(settings)
        unknown = sorted(arms_to_run - set(accepted))
        if unknown:
            raise SystemExit(f"error: unknown arm(s) {', '.join(unknown)} for this source; accepted: "
                             f"{', '.join(accepted)}.")
    if not args.report:
        for seed in (int(s) for s in args.seeds.split(",")):
            path = run_seed(seed, args.out, settings, args.scratch_models if args.source == "toy" else None,
                            arms_to_run)
            print(f"wrote {path}", flush=True)
    report(args.out)
    print(f"wrote {args.out / 'summary.json'}")


if __name__ == "__main__":
    main()
