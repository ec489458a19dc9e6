"""Continued training (LoRA through peft, or full) of RoPE-ID checkpoints, with accelerate.

One loop serves a single CPU or GPU, multi-GPU data parallel and FSDP2 (whatever ``accelerate
launch`` / its config sets up). It evaluates held-out perplexity at several lengths, logs to a
JSON-lines file (and to TensorBoard / wandb when asked and installed), writes checkpoints
atomically, and resumes exactly: data order, dropout RNG, optimizer and schedule all continue as
if the run had never stopped.

Layout of ``output_dir``::

    training_args.json   the arguments, as given
    base/                the converted RoPE-ID base (only when a plain Llama was converted here)
    log.jsonl            one JSON record per logged step / evaluation
    checkpoints/step-000050/   accelerate state (trainable weights only) + trainer_state.json
    adapter/             the final LoRA adapter (peft format) + tokenizer   (LoRA runs)
    model/               the final full model + tokenizer                   (full fine-tunes)

``output_dir`` is a run folder that grows while training (checkpoints, log), so it is not swapped
as a whole: ``force`` empties a non-empty one at the start. Everything inside it is written
through ``hf_ropeid.atomic``.

The arguments come in five groups, one per concern (as trl splits its script, model and training
arguments): ``ConversionArguments``, ``DataArguments``, ``AdapterArguments``,
``OptimizationArguments`` and ``RunArguments``; ``FinetuneArguments`` holds one of each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import atomic_directory, atomic_file, check_target, partial_path, write_json_atomic
from .data import DataSource, build_training_blocks, load_held_out, window_tokens
from .errors import HfRopeIDError, require
from .parameters import CONVERSION_OPTION_KEYS, DEFAULT_RECIPE, RECIPES, default_recipe, parse_rotary_fraction

logger = logging.getLogger(__name__)

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
EMBEDDING_AND_NORM_MODULES = ["embed_tokens", "norm"]  # suffix match: also every *_layernorm
SCHEDULERS = ("cosine", "linear", "constant")
MIXED_PRECISION = ("no", "bf16", "fp16")
TRACKERS = ("tensorboard", "wandb")
CHECKPOINT_PREFIX = "step-"
IGNORE_INDEX = -100
LOSS_CHUNK_ELEMENTS = 2**24  # float32 logits per LM-head chunk of the training loss (64 MiB)
MIN_LOSS_CHUNK = 128
TRAINER_STATE = "trainer_state.json"
# Arguments that may change when resuming without changing what the run computes.
RESUMABLE_CHANGES = {
    "max_steps",
    "num_epochs",
    "eval_every",
    "save_every",
    "save_total_limit",
    "log_every",
    "resume_from",
    "report_to",
    "force",
    "output_dir",
    "eval_at_start",
    "num_proc",
}


class TrainingError(HfRopeIDError, ValueError):
    """Training cannot start or continue; the message says what was wrong and what is accepted."""


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


def _need(condition: bool, message: str) -> None:
    if not condition:
        raise TrainingError(message)


# ----------------------------------------------------------------------------- arguments


@dataclass
class ConversionArguments:
    """The model to train, and how a plain Llama is converted to RoPE-ID first (every RoPE-ID parameter)."""

    model: str = _help("RoPE-ID folder or Hub id, or a plain Llama folder / Hub id (converted first, see --convert).")
    convert: bool = _help(
        "Convert a plain Llama checkpoint to RoPE-ID before training (--no-convert trains it as it is, e.g. a control run).",
        default=True,
    )
    channel_selection: str = _help("Which channel pairs keep rotating in the conversion.", default="frequency")
    trust_remote_code: bool = _help("Allow remote code for models that are neither Llama nor RoPE-ID.", default=False)
    recipe: str | None = _help(
        f"Named set of the RoPE-ID options (conversion): {' | '.join(RECIPES)} (default: {DEFAULT_RECIPE}).", default=None
    )
    rope_theta: float | None = _help("Base of the original spectrum (conversion; default: the model's).", default=None)
    training_length: int | None = _help(
        "L of the RoPE-ID spectrum (conversion; default: the model's max_position_embeddings).", default=None
    )
    rotary_fraction: str | None = _help(
        "Fraction of each head that rotates, or 'auto' / 'auto:T' (conversion).", default=None
    )
    shortest_period: float | None = _help("Period in tokens of the fastest rotated pair (conversion).", default=None)
    turns_per_training_length: float | None = _help("Turns of the slowest pair inside L (conversion).", default=None)
    spectrum: str | None = _help("RoPE-ID spectrum for the conversion: rope_id | original | minimal.", default=None)
    temperature: str | None = _help(
        "Query temperature beyond L: query_log | length_log | floor_log | ssmax | none (conversion).", default=None
    )
    temperature_coefficient: float | None = _help("c of query_log (conversion).", default=None)
    rotary_window: int | None = _help(
        "Experimental: keys this many tokens back or more are scored without phase (conversion).", default=None
    )
    far_field: str | None = _help("Experimental: none | log_count (conversion).", default=None)
    temperature_channels: str | None = _help(
        "Experimental: channels the temperature multiplies, all | unrotated (conversion).", default=None
    )
    local_layers: str | None = _help(
        "Experimental: layers (e.g. 0 or 0,1) that see only the rotary window and the first key (conversion).",
        default=None,
    )

    def __post_init__(self) -> None:
        try:
            parse_rotary_fraction(self.rotary_fraction)
        except ValueError as err:
            raise TrainingError(f"--rotary-fraction: {err}") from None

    def rope_id_parameters(self) -> dict[str, Any]:
        values = {k: getattr(self, k) for k in CONVERSION_OPTION_KEYS if getattr(self, k) is not None}
        if "rotary_fraction" in values:
            values["rotary_fraction"] = parse_rotary_fraction(values["rotary_fraction"])
        return values


@dataclass
class DataArguments:
    """Training and held-out text, and how it is cut into sequences and evaluation windows."""

    data: list[str] = _help(
        "Training text: files (.txt .md .markdown .rst .py .jsonl .json .parquet), folders, globs, or one datasets name."
    )
    eval_data: list[str] = _help(
        "Held-out text (same forms as --data); else --eval-fraction of the training documents.", default_factory=list
    )
    eval_fraction: float = _help("Fraction of training documents held out when no --eval-data is given.", default=0.0)
    text_field: str = _help("Column holding the text in jsonl / json / parquet / datasets data.", default="text")
    dataset_config: str | None = _help("Config name of a datasets dataset.", default=None)
    seq_length: int = _help("Tokens per training sequence.", default=1024)
    eval_lengths: list[int] = _help(
        "Lengths at which held-out perplexity is measured (default: seq_length and 2*seq_length).", default_factory=list
    )
    eval_tokens: int = _help(
        "Held-out tokens per evaluation length: eval_tokens // length windows (at least 1), each inside one document.",
        default=16384,
    )
    num_proc: int | None = _help("Processes for tokenising.", default=None)

    def __post_init__(self) -> None:
        self.data, self.eval_data = list(self.data), list(self.eval_data)
        self.eval_lengths = [int(n) for n in self.eval_lengths] or [self.seq_length, 2 * self.seq_length]
        _need(bool(self.data), "No training data: pass at least one --data file, folder, glob or datasets name.")
        _need(self.seq_length >= 2, f"--seq-length must be at least 2, got {self.seq_length}.")
        _need(
            all(n >= 2 for n in self.eval_lengths), f"--eval-lengths must all be at least 2, got {self.eval_lengths}."
        )
        _need(self.eval_tokens >= 2, f"--eval-tokens must be at least 2, got {self.eval_tokens}.")
        _need(0 <= self.eval_fraction < 1, f"--eval-fraction must be in [0, 1), got {self.eval_fraction}.")
        _need(not (self.eval_data and self.eval_fraction), "Give either --eval-data or --eval-fraction, not both.")


@dataclass
class AdapterArguments:
    """What is trained: a LoRA adapter (rank, targets, extra modules) or every weight."""

    full_finetune: bool = _help("Train every weight instead of a LoRA adapter.", default=False)
    lora_r: int = _help("LoRA rank.", default=16)
    lora_alpha: float = _help("LoRA alpha (scale = alpha / r).", default=32.0)
    lora_dropout: float = _help(
        "Dropout on the LoRA input. 0 (the default) keeps no dropped copy of every projection's input: "
        "0.05 cost 1.4x the memory per token (benchmarks/long_sequence_memory.py).",
        default=0.0,
    )
    target_modules: list[str] = _help(
        "Linear layers that get LoRA (names or 'all-linear').", default_factory=lambda: list(DEFAULT_TARGET_MODULES)
    )
    train_embeddings_and_norms: bool = _help(
        "Also train embeddings and all norms (peft modules_to_save; LongLoRA's recipe for context extension).",
        default=False,
    )

    def __post_init__(self) -> None:
        self.target_modules = list(self.target_modules)
        _need(self.lora_r >= 1, f"--lora-r must be a positive integer, got {self.lora_r}.")
        _need(self.lora_alpha > 0, f"--lora-alpha must be positive, got {self.lora_alpha}.")
        _need(0 <= self.lora_dropout < 1, f"--lora-dropout must be in [0, 1), got {self.lora_dropout}.")
        _need(
            bool(self.target_modules) or self.full_finetune,
            "--target-modules is empty; name at least one linear layer.",
        )


@dataclass
class OptimizationArguments:
    """Optimizer, schedule, batch and precision."""

    learning_rate: float = _help("Peak learning rate.", default=2e-4)
    weight_decay: float = _help("AdamW weight decay.", default=0.0)
    lr_scheduler: str = _help("cosine | linear | constant (after warmup).", default="cosine")
    warmup_steps: int = _help("Linear warmup steps.", default=0)
    max_steps: int | None = _help("Optimizer steps to run (overrides --num-epochs).", default=None)
    num_epochs: float = _help("Passes over the training blocks when --max-steps is not given.", default=1.0)
    batch_size: int = _help("Sequences per device per micro-batch.", default=1)
    gradient_accumulation_steps: int = _help("Micro-batches per optimizer step.", default=1)
    max_grad_norm: float = _help("Gradient clipping (0 disables).", default=1.0)
    mixed_precision: str = _help("no | bf16 | fp16 (weights stay fp32).", default="no")
    activation_checkpointing: bool = _help(
        "Recompute activations in the backward pass (saves memory; alias --gradient-checkpointing).", default=False
    )
    context_parallel_size: int = _help(
        "Shard every sequence over this many GPUs (accelerate's context parallelism: FSDP2, sdpa, CUDA only); "
        "1 disables it.",
        default=1,
    )
    seed: int = _help("Seed for adapter init, data order and dropout.", default=0)

    def __post_init__(self) -> None:
        _need(
            self.learning_rate > 0 and math.isfinite(self.learning_rate),
            f"--learning-rate must be positive, got {self.learning_rate}.",
        )
        _need(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}.")
        _need(
            self.lr_scheduler in SCHEDULERS,
            f"--lr-scheduler must be one of {', '.join(SCHEDULERS)}, got {self.lr_scheduler!r}.",
        )
        _need(self.warmup_steps >= 0, f"--warmup-steps must be >= 0, got {self.warmup_steps}.")
        _need(self.max_steps is None or self.max_steps >= 1, f"--max-steps must be at least 1, got {self.max_steps}.")
        _need(self.num_epochs > 0, f"--num-epochs must be positive, got {self.num_epochs}.")
        _need(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}.")
        _need(
            self.gradient_accumulation_steps >= 1,
            f"--gradient-accumulation-steps must be at least 1, got {self.gradient_accumulation_steps}.",
        )
        _need(self.max_grad_norm >= 0, f"--max-grad-norm must be >= 0, got {self.max_grad_norm}.")
        _need(
            self.mixed_precision in MIXED_PRECISION,
            f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}.",
        )
        _need(
            self.context_parallel_size >= 1,
            f"--context-parallel-size must be at least 1, got {self.context_parallel_size}.",
        )


@dataclass
class RunArguments:
    """Where the run writes, how often it logs, evaluates and checkpoints, and where it resumes."""

    output_dir: str = _help("Where the adapter, checkpoints and log go.")
    log_every: int = _help("Log training loss every N steps.", default=1)
    eval_every: int = _help("Evaluate every N steps (0: only at the end).", default=0)
    eval_at_start: bool = _help("Evaluate before the first step.", default=True)
    save_every: int = _help("Checkpoint every N steps (0: none).", default=0)
    save_total_limit: int | None = _help("Keep only the newest N checkpoints.", default=None)
    resume_from: str | None = _help("Checkpoint folder to continue from, or 'latest' (in output_dir).", default=None)
    report_to: list[str] = _help(
        "Extra trackers: tensorboard, wandb (the JSON log is always written).", default_factory=list
    )
    force: bool = _help("Empty a non-empty output_dir before training.", default=False)

    def __post_init__(self) -> None:
        self.report_to = list(self.report_to)
        for name in ("eval_every", "save_every"):
            _need(getattr(self, name) >= 0, f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}.")
        _need(self.log_every >= 1, f"--log-every must be at least 1, got {self.log_every}.")
        _need(
            self.save_total_limit is None or self.save_total_limit >= 1,
            f"--save-total-limit must be at least 1, got {self.save_total_limit}.",
        )
        unknown = sorted(set(self.report_to) - set(TRACKERS))
        _need(not unknown, f"Unknown --report-to tracker(s) {unknown}; accepted: {', '.join(TRACKERS)}.")


ARGUMENT_GROUPS = {
    "conversion": ConversionArguments,
    "data": DataArguments,
    "adapter": AdapterArguments,
    "optimization": OptimizationArguments,
    "run": RunArguments,
}


@dataclass
class FinetuneArguments:
    """Everything ``hf-ropeid finetune`` accepts, one group per concern; each field is one command-line option.

    ``from_flat(**options)`` builds it from flat keyword arguments (the option names); ``to_json()``
    flattens it again (the format of ``training_args.json`` and of checkpoints).
    """

    conversion: ConversionArguments
    data: DataArguments
    adapter: AdapterArguments
    optimization: OptimizationArguments
    run: RunArguments

    @classmethod
    def from_flat(cls, **options: Any) -> FinetuneArguments:
        groups = {}
        for name, group in ARGUMENT_GROUPS.items():
            names = {f.name for f in dataclasses.fields(group)}
            groups[name] = group(**{k: options.pop(k) for k in list(options) if k in names})
        if options:
            raise TypeError(f"Unknown finetune argument(s): {sorted(options)}")
        return cls(**groups)

    def to_json(self) -> dict[str, Any]:
        return {k: v for name in ARGUMENT_GROUPS for k, v in dataclasses.asdict(getattr(self, name)).items()}


# ----------------------------------------------------------------------------- model


def load_base_model(args: ConversionArguments, calibration_input_ids=None):
    """``(model, converted)``: the model to train, in float32, and whether it was converted here."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.float32, trust_remote_code=args.trust_remote_code
    )
    if config.model_type == "llama" and args.convert:
        from .conversion import convert_model

        model = convert_model(
            model,
            channel_selection=args.channel_selection,
            calibration_input_ids=calibration_input_ids,
            **default_recipe(args.rope_id_parameters()),
        )
        return model, True
    if args.rope_id_parameters():
        raise TrainingError(
            f"Conversion options {sorted(args.rope_id_parameters())} apply only when converting a plain Llama "
            f"checkpoint; {args.model} is a {config.model_type!r} model{' and --no-convert was given' if config.model_type == 'llama' else ''}."
        )
    return model, False


def tied_embeddings(model) -> bool:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return bool(getattr(config, "tie_word_embeddings", False))


def add_lora(model, args: AdapterArguments):
    """Wraps ``model`` in a peft LoRA model; raises TrainingError if the targets match nothing."""
    require("peft", "train", "LoRA training")
    from peft import LoraConfig, get_peft_model

    modules_to_save = list(EMBEDDING_AND_NORM_MODULES) if args.train_embeddings_and_norms else None
    targets: str | list[str] = "all-linear" if args.target_modules == ["all-linear"] else args.target_modules
    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=targets,
        modules_to_save=modules_to_save,
        task_type="CAUSAL_LM",
        # With tied embeddings a trainable copy of embed_tokens must stay tied to lm_head.
        ensure_weight_tying=bool(modules_to_save) and tied_embeddings(model),
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise TrainingError(
            f"LoRA targets {args.target_modules} do not fit the model ({err}). Linear layers: {linear}."
        ) from err


# ----------------------------------------------------------------------------- data order


class EpochShuffleSampler:
    """A fresh permutation of the blocks every epoch, from ``seed + epoch`` alone.

    No hidden state advances while iterating, so skipping into the middle of an epoch after a
    resume sees exactly the order the interrupted run saw.
    """

    def __init__(self, num_blocks: int, seed: int):
        self.num_blocks, self.seed, self.epoch = num_blocks, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        import torch

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_blocks, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_blocks


def collate_blocks(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A micro-batch: ``input_ids``, their global ``position_ids`` and ``shift_labels`` (already shifted).

    Entry ``i`` of ``shift_labels`` is the token that position ``i`` predicts (``IGNORE_INDEX`` at the
    last position). Both travel with the tokens when a sequence is cut into shards (context or
    sequence parallelism), so every shard sees its true positions and needs no neighbour to shift.
    """
    import torch

    input_ids = torch.tensor([row["input_ids"] for row in rows], dtype=torch.long)
    return {
        "input_ids": input_ids,
        "position_ids": torch.arange(input_ids.shape[1]).expand_as(input_ids).contiguous(),
        "shift_labels": shift_labels_of(input_ids),
    }


def shift_labels_of(input_ids):
    """Next-token targets of every position, ``IGNORE_INDEX`` after the last one."""
    import torch

    return torch.nn.functional.pad(input_ids[:, 1:], (0, 1), value=IGNORE_INDEX)


# ----------------------------------------------------------------------------- the loss, without full-length logits


def loss_chunk_tokens(batch_size: int, vocab_size: int) -> int:
    """Positions per LM-head chunk: about ``LOSS_CHUNK_ELEMENTS`` float32 logits, at least ``MIN_LOSS_CHUNK``."""
    return max(MIN_LOSS_CHUNK, LOSS_CHUNK_ELEMENTS // max(1, batch_size * vocab_size))


def chunked_token_losses(head, hidden, shift_labels, chunk_tokens: int, softcap: float | None = None):
    """Cross-entropy of every position, ``[batch, n]`` float32 (0 where the label is ``IGNORE_INDEX``).

    The LM head runs on ``chunk_tokens`` positions at a time, each chunk under non-reentrant
    ``torch.utils.checkpoint``: its logits are freed as soon as its losses are known and recomputed
    (one chunk at a time) in the backward pass, so no step ever holds ``n x vocab`` logits. The
    result equals ``cross_entropy(head(hidden), shift_labels, reduction="none")`` up to rounding.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    def piece(h, labels):
        logits = head(h).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        losses = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
        )
        return losses.view(labels.shape)

    pieces = zip(hidden.split(chunk_tokens, dim=1), shift_labels.split(chunk_tokens, dim=1))
    if not torch.is_grad_enabled():
        return torch.cat([piece(h, y) for h, y in pieces], dim=1)
    return torch.cat([checkpoint(piece, h, y, use_reentrant=False) for h, y in pieces], dim=1)


def _accepts_logits_to_keep(model) -> bool:
    import inspect

    forward = inspect.signature(type(model).forward).parameters
    return "logits_to_keep" in forward


def causal_lm_loss(model, batch: dict[str, Any], num_tokens: int | None = None):
    """Mean next-token loss of ``batch`` (from ``collate_blocks``), computed from the decoder's hidden states.

    ``model`` is the prepared model (through DDP / FSDP wrappers, whose forward must run); it is asked
    for no logits (``logits_to_keep`` selects none) and its last hidden states go through the LM head
    in chunks (``chunked_token_losses``). ``num_tokens`` is the number of predicted tokens to divide by
    (default: those of ``batch``; a context-parallel shard passes the whole sequence's count).
    The value equals ``model(input_ids, labels=input_ids).loss``.
    """
    import torch
    from accelerate.utils import extract_model_from_parallel

    inner = extract_model_from_parallel(model)  # the peft / transformers model under DDP (FSDP2 wraps in place)
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    labels = batch["shift_labels"]
    if num_tokens is None:
        num_tokens = int((labels != IGNORE_INDEX).sum())
    if not _accepts_logits_to_keep(base):  # a model without logits_to_keep: its own loss, full logits
        return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["input_ids"]).loss
    outputs = model(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        use_cache=False,
        output_hidden_states=True,
        logits_to_keep=torch.empty(0, dtype=torch.long, device=labels.device),
    )
    hidden = outputs.hidden_states[-1]  # after the final norm: what the LM head reads
    softcap = getattr(base.config, "final_logit_softcapping", None)
    losses = chunked_token_losses(
        inner.get_output_embeddings(),
        hidden,
        labels.to(hidden.device),
        loss_chunk_tokens(labels.shape[0], base.config.get_text_config().vocab_size),
        softcap,
    )
    return losses.sum() / max(1, num_tokens)


# ----------------------------------------------------------------------------- checkpoints and resume


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (with trainer_state.json), oldest first."""
    root = Path(output_dir) / "checkpoints"
    found = [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if (p / TRAINER_STATE).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def resolve_resume(args: RunArguments) -> Path | None:
    if args.resume_from is None:
        return None
    if args.resume_from == "latest":
        found = list_checkpoints(Path(args.output_dir))
        if not found:
            raise TrainingError(f"--resume-from latest: no complete checkpoint under {args.output_dir}/checkpoints.")
        return found[-1]
    path = Path(args.resume_from)
    if not (path / TRAINER_STATE).is_file():
        raise TrainingError(f"--resume-from {path}: not a complete checkpoint (no {TRAINER_STATE}).")
    return path


def check_resume_compatible(saved: dict[str, Any], args: FinetuneArguments) -> None:
    current = args.to_json()
    # An argument added after the checkpoint was written took its default there.
    defaults = {
        f.name: f.default
        for group in ARGUMENT_GROUPS.values()
        for f in dataclasses.fields(group)
        if f.default is not dataclasses.MISSING
    }
    saved = {**{k: defaults[k] for k in current if k not in saved and k in defaults}, **saved}
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k])
    if changed:
        details = "; ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise TrainingError(
            f"Cannot resume exactly: these arguments differ from the checkpoint's run: {details}. Only "
            f"{', '.join(sorted(RESUMABLE_CHANGES))} may change."
        )


# ----------------------------------------------------------------------------- log


class JsonLog:
    """``log.jsonl`` on the main process; on resume, records after the resumed step are dropped."""

    def __init__(self, path: Path, enabled: bool, keep_until_step: int | None):
        self.path, self.enabled = path, enabled
        if enabled and keep_until_step is not None and path.is_file():
            kept = [
                line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= keep_until_step
            ]
            with atomic_file(path) as partial:
                partial.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_log(output_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _trackers(args: RunArguments) -> list[str]:
    import importlib.util

    usable = []
    for name in args.report_to:
        module = "torch.utils.tensorboard" if name == "tensorboard" else name
        try:
            found = importlib.util.find_spec(module) is not None and (
                name != "tensorboard" or importlib.util.find_spec("tensorboard")
            )
        except ModuleNotFoundError:
            found = False
        if found:
            usable.append(name)
        else:
            logger.warning("--report-to %s: the package is not installed; logging to log.jsonl only.", name)
    return usable


# ----------------------------------------------------------------------------- evaluation


def evaluate_perplexity(
    model, windows_by_length: dict[int, list[list[int]]], accelerator, logits_chunk: int | None = None
) -> dict[int, float]:
    """Perplexity per length over held-out windows, windows sharded across processes.

    The loss of each window comes from the package's one perplexity pass
    (``evaluation.passes.token_losses``), through the model's own forward (FSDP-safe).
    """
    import torch

    from .evaluation.passes import token_losses

    was_training = model.training
    model.eval()
    results = {}
    for length, windows in windows_by_length.items():
        totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # nll sum, token count
        mine = windows[accelerator.process_index :: accelerator.num_processes]
        # Every process runs the same number of forwards (FSDP needs them in lockstep); padding counts 0.
        for i in range(math.ceil(len(windows) / accelerator.num_processes)):
            ids = torch.tensor([mine[i] if i < len(mine) else windows[0]], device=accelerator.device)
            with accelerator.autocast():
                nll = token_losses(model, ids, logits_chunk=logits_chunk).double().sum().item()
            weight = float(i < len(mine))
            totals += torch.tensor(
                [nll * weight, weight * (length - 1)], dtype=torch.float64, device=accelerator.device
            )
        totals = accelerator.reduce(totals, reduction="sum")
        results[length] = math.exp(totals[0].item() / totals[1].item())
    model.train(was_training)
    return results


# ----------------------------------------------------------------------------- the run


@dataclass
class TrainingRun:
    """The state of one run between setup and finish; ``step`` counts completed optimizer steps."""

    args: FinetuneArguments
    accelerator: Any
    out: Path
    tokenizer: Any
    model: Any
    optimizer: Any
    scheduler: Any
    dataloader: Any
    parameters: list
    windows_by_length: dict[int, list[list[int]]]
    log: JsonLog
    trackers: list[str]
    base_reference: str
    converted: bool
    micro_batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    step: int = 0
    last_loss: float = float("nan")
    last_eval: dict[str, float] = field(default_factory=dict)


def _unwrapped_name(name: str) -> str:
    """A parameter's name without the ``module.`` prefix of a DDP wrapper."""
    return name[len("module.") :] if name.startswith("module.") else name


class _TrainableOnly:
    """Accelerate state hooks: checkpoints hold only the trainable weights (the base never changes in a LoRA run).

    Names are those of the unwrapped model: the state accelerate hands over has no DDP ``module.``
    prefix, and the weights are loaded into the unwrapped model, every one of them or an error.
    """

    def __init__(self, trainable_names: set[str]):
        self.names = {_unwrapped_name(n) for n in trainable_names}

    def save(self, models, weights, output_dir) -> None:
        for i, state in enumerate(weights):
            weights[i] = {_unwrapped_name(k): v for k, v in state.items() if _unwrapped_name(k) in self.names}
            missing = self.names - set(weights[i]) if i == 0 else set()
            if missing:
                raise TrainingError(f"Trainable weights {sorted(missing)[:5]}... are missing from the state to save.")

    def load(self, models, input_dir) -> None:
        from accelerate.utils import extract_model_from_parallel
        from safetensors.torch import load_file

        for i, model in enumerate(models):
            state = load_file(str(Path(input_dir) / ("model.safetensors" if i == 0 else f"model_{i}.safetensors")))
            missing = self.names - set(state)
            if missing:
                raise TrainingError(f"Checkpoint {input_dir} lacks trainable weights {sorted(missing)[:5]}...")
            unexpected = extract_model_from_parallel(model).load_state_dict(state, strict=False).unexpected_keys
            if unexpected:
                raise TrainingError(f"Checkpoint {input_dir} holds weights the model lacks: {unexpected[:5]}...")
        models.clear()  # loaded here; accelerate must not load them again (strictly)


def _prepare_output_dir(args: FinetuneArguments, accelerator) -> Path:
    out = Path(args.run.output_dir)
    if accelerator.is_main_process and args.run.resume_from is None and out.exists() and any(out.iterdir()):
        shutil.rmtree(out)  # --force was given (checked before any work)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if args.run.resume_from is None:
            write_json_atomic(out / "training_args.json", args.to_json())
    accelerator.wait_for_everyone()
    return out


def _load_text(args: FinetuneArguments, accelerator):
    """``(tokenizer, train_blocks, windows_by_length)``: cheap to fail on, so it runs before output_dir is touched."""
    with accelerator.main_process_first():
        from transformers import AutoTokenizer

        data = args.data
        tokenizer = AutoTokenizer.from_pretrained(
            args.conversion.model, trust_remote_code=args.conversion.trust_remote_code
        )
        source = DataSource(tuple(data.data), text_field=data.text_field, dataset_config=data.dataset_config)
        train_blocks, held_out = build_training_blocks(
            source,
            tokenizer,
            data.seq_length,
            seed=args.optimization.seed,
            eval_fraction=data.eval_fraction,
            num_proc=data.num_proc,
        )
        if data.eval_data:
            held_out = load_held_out(
                DataSource(tuple(data.eval_data), text_field=data.text_field, dataset_config=data.dataset_config),
                tokenizer,
                data.num_proc,
            )
    windows_by_length = {}
    if held_out is not None:
        windows_by_length = {n: window_tokens(held_out, n, max(1, data.eval_tokens // n)) for n in data.eval_lengths}
    return tokenizer, train_blocks, windows_by_length


def _load_trainable_model(args: FinetuneArguments, accelerator, out: Path, tokenizer, train_blocks):
    """``(model, converted, base_reference)``: the model with its adapter (or all weights) trainable.

    A base converted here is saved once to ``out/base`` and becomes the adapter's base.
    """
    import torch
    from accelerate.utils import set_seed

    set_seed(args.optimization.seed)  # adapter initialisation is identical on every process and every run
    conversion = args.conversion
    with accelerator.main_process_first():
        calibration = (
            torch.tensor([train_blocks[0]["input_ids"]]) if conversion.channel_selection != "frequency" else None
        )
        model, converted = load_base_model(conversion, calibration)
    base_reference = str(Path(conversion.model).resolve()) if Path(conversion.model).exists() else conversion.model
    if converted:
        base_dir = out / "base"
        if accelerator.is_main_process and not base_dir.exists():
            with atomic_directory(base_dir) as partial:
                model.save_pretrained(partial)
                tokenizer.save_pretrained(partial)
        base_reference = str(base_dir.resolve())
    accelerator.wait_for_everyone()
    if args.optimization.activation_checkpointing:  # before peft wraps the model; non-reentrant, inputs require grad
        model.activation_checkpointing_enable()
    if args.adapter.full_finetune:
        model.requires_grad_(True)
    else:
        model = add_lora(model, args.adapter)
    return model.train(), converted, base_reference


def _rotary_window(args: ConversionArguments) -> int | None:
    """The ``rotary_window`` of the model this run trains: the checkpoint's own, or what converting it gives
    (the commands' default recipe sets one, L/2)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    if config.model_type == "llama" and args.convert:
        from .conversion import rope_id_config

        return rope_id_config(config, **default_recipe(args.rope_id_parameters())).rope_parameters.get("rotary_window")
    return (getattr(config, "rope_parameters", None) or {}).get("rotary_window")


def context_parallelism(args: FinetuneArguments):
    """accelerate's ``ParallelismConfig(cp_size=N)`` for ``--context-parallel-size N`` > 1, or None.

    Refused, with the reason, where it cannot run: with ``rotary_window`` (its attention is no single
    causal sdpa call, which is all torch's context parallelism shards), with an accelerate that has no
    ``ParallelismConfig``, without CUDA GPUs, and for sequences that do not cut into 2N equal pieces.
    accelerate itself refuses it without FSDP2.
    """
    size = args.optimization.context_parallel_size
    if size == 1:
        return None
    if _rotary_window(args.conversion) is not None:
        raise TrainingError(
            "rotary_window is not supported with context parallelism: its attention is RoPE-ID's own two-pass "
            "kernel, and torch's context parallelism shards only causal sdpa. Train without "
            "--context-parallel-size, or a model without rotary_window."
        )
    import accelerate
    import torch

    if not hasattr(accelerate, "ParallelismConfig"):
        raise TrainingError(
            f"--context-parallel-size needs accelerate's ParallelismConfig (accelerate >= 1.10); installed: "
            f"{accelerate.__version__}."
        )
    if not torch.cuda.is_available():
        raise TrainingError(
            "--context-parallel-size needs CUDA GPUs: torch's context parallelism shards sdpa attention over "
            "NCCL, and this machine has no GPU. On CPUs, train whole sequences (data parallel: accelerate launch)."
        )
    if args.data.seq_length % (2 * size):
        raise TrainingError(
            f"--seq-length {args.data.seq_length} must be a multiple of 2 x --context-parallel-size "
            f"({2 * size}): each sequence is cut into {2 * size} equal pieces (load-balanced causal sharding)."
        )
    return accelerate.ParallelismConfig(cp_size=size)


def check_launch(accelerator) -> None:
    """Refuses launches that accelerate would silently run as something else.

    With accelerate 1.15 on CPUs, ``accelerate launch --use_fsdp`` either runs plain DDP (with
    ``ACCELERATE_USE_CPU=1``; accelerate builds FSDP only on top of a GPU-like distributed type) or
    starts N processes that each train alone (without it), all writing the same output folder.
    """
    import os

    from accelerate.utils import DistributedType

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and accelerator.num_processes == 1:
        raise TrainingError(
            f"Launched as {world} processes, but accelerate set up none of them as distributed "
            f"(distributed type {accelerator.distributed_type.value}): each would train alone. On CPUs launch "
            "with ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N (gloo data parallel); "
            "accelerate runs FSDP only on GPUs."
        )
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and (
        accelerator.distributed_type != DistributedType.FSDP
    ):
        raise TrainingError(
            f"FSDP was asked for (accelerate launch --use_fsdp), but accelerate set up "
            f"{accelerator.distributed_type.value} instead: accelerate builds FSDP only on GPUs (not on CPUs / "
            "gloo). Drop the FSDP flags to train data parallel on CPUs."
        )


def setup_run(args: FinetuneArguments) -> TrainingRun:
    """Data, model, optimizer, schedule and log of a new or resumed run; nothing is trained yet."""
    require("accelerate", "train", "Training")
    import torch
    from accelerate import Accelerator
    from transformers import get_scheduler

    opt = args.optimization
    trackers = _trackers(args.run)
    parallelism = context_parallelism(args)
    accelerator = Accelerator(
        mixed_precision=opt.mixed_precision,
        log_with=trackers or None,
        project_dir=args.run.output_dir,
        step_scheduler_with_optimizer=False,
        **({"parallelism_config": parallelism} if parallelism is not None else {}),
    )
    check_launch(accelerator)
    if args.run.resume_from is None:
        check_target(
            args.run.output_dir, args.run.force, hint="pass --force to replace it or --resume-from to continue"
        )
    resume_dir = resolve_resume(args.run)
    if resume_dir is not None:
        check_resume_compatible(json.loads((resume_dir / TRAINER_STATE).read_text())["args"], args)
    tokenizer, train_blocks, windows_by_length = _load_text(args, accelerator)
    out = _prepare_output_dir(args, accelerator)
    model, converted, base_reference = _load_trainable_model(args, accelerator, out, tokenizer, train_blocks)
    rope = getattr(model.config, "rope_parameters", None) or {}
    if rope.get("rotary_window") is not None and args.data.seq_length <= rope["rotary_window"]:
        # The far field (keys scored by the unrotated pairs) is what the adaptation has to teach (RESULTS §10).
        logger.warning(
            "--seq-length %d is not longer than rotary_window %d: no training sequence has a key that the far field "
            "scores. Adapt at the training length (--seq-length %s), or convert with a shorter --training-length.",
            args.data.seq_length, rope["rotary_window"], rope.get("training_length"),
        )

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=opt.learning_rate, weight_decay=opt.weight_decay
    )
    # The loader gets its own generator: starting an iterator draws from it, and a draw from the global RNG
    # would shift the dropout masks of a resumed run (which starts one more iterator than the original).
    dataloader = torch.utils.data.DataLoader(
        train_blocks,
        batch_size=opt.batch_size,
        sampler=EpochShuffleSampler(len(train_blocks), opt.seed),
        collate_fn=collate_blocks,
        drop_last=True,
        generator=torch.Generator().manual_seed(opt.seed),
    )
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    micro_batches_per_epoch = len(dataloader)
    if micro_batches_per_epoch == 0:
        raise TrainingError(
            f"{len(train_blocks)} training blocks cannot fill one batch of {opt.batch_size} x "
            f"{accelerator.num_processes} process(es); add data or lower --batch-size / --seq-length."
        )
    steps_per_epoch = math.ceil(micro_batches_per_epoch / opt.gradient_accumulation_steps)
    total_steps = opt.max_steps or max(1, math.ceil(opt.num_epochs * steps_per_epoch))
    scheduler = get_scheduler(
        "constant_with_warmup" if opt.lr_scheduler == "constant" else opt.lr_scheduler,
        optimizer,
        num_warmup_steps=opt.warmup_steps,
        num_training_steps=total_steps,
    )
    scheduler = accelerator.prepare(scheduler)

    # Names and tensors as the prepared (possibly DDP- or FSDP-wrapped) model has them.
    hooks = _TrainableOnly({name for name, p in model.named_parameters() if p.requires_grad})
    accelerator.register_save_state_pre_hook(hooks.save)
    accelerator.register_load_state_pre_hook(hooks.load)
    completed = 0
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
        completed = json.loads((resume_dir / TRAINER_STATE).read_text())["step"]
        logger.info("Resumed from %s at step %d", resume_dir, completed)
    log = JsonLog(out / "log.jsonl", accelerator.is_main_process, completed if resume_dir is not None else None)
    if trackers:
        accelerator.init_trackers("hf-ropeid-finetune", config={k: str(v) for k, v in args.to_json().items()})
    return TrainingRun(
        args=args,
        accelerator=accelerator,
        out=out,
        tokenizer=tokenizer,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        dataloader=dataloader,
        parameters=[p for p in model.parameters() if p.requires_grad],
        windows_by_length=windows_by_length,
        log=log,
        trackers=trackers,
        base_reference=base_reference,
        converted=converted,
        micro_batches_per_epoch=micro_batches_per_epoch,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        step=completed,
    )


def log_metrics(run: TrainingRun, record: dict[str, Any]) -> None:
    run.log.write(record)
    if run.trackers:
        run.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])


def evaluate(run: TrainingRun) -> dict[str, float]:
    """Held-out perplexity at every evaluation length now, logged (empty without held-out text)."""
    if not run.windows_by_length:
        return {}
    from accelerate.utils import DistributedType

    # The LM head runs on chunks of positions, except under FSDP (its root forward gathers the head's weights).
    chunk = None if run.accelerator.distributed_type == DistributedType.FSDP else 2048
    ppl = evaluate_perplexity(
        run.accelerator.unwrap_model(run.model), run.windows_by_length, run.accelerator, logits_chunk=chunk
    )
    record = {"step": run.step, **{f"eval_ppl@{n}": v for n, v in ppl.items()}}
    log_metrics(run, record)
    return record


def accumulation_groups(run: TrainingRun):
    """Yields ``(epoch, micro_batches)`` for each optimizer step from ``run.step`` on, forever.

    Each epoch's order comes from the sampler's ``seed + epoch`` alone, and a resumed run skips
    the micro-batches already seen, so it sees exactly what the uninterrupted run saw.
    """
    accumulation = run.args.optimization.gradient_accumulation_steps
    while True:
        epoch, step_in_epoch = divmod(run.step, run.steps_per_epoch)
        run.dataloader.set_epoch(epoch)
        skip = step_in_epoch * accumulation
        batches = run.accelerator.skip_first_batches(run.dataloader, skip) if skip else run.dataloader
        group: list[Any] = []
        for index, batch in enumerate(batches, start=skip):
            group.append(batch)
            if len(group) < accumulation and index + 1 < run.micro_batches_per_epoch:
                continue
            yield epoch, group
            group = []


@contextlib.contextmanager
def sequence_shards(run: TrainingRun, batch: dict[str, Any]):
    """Context parallelism for one micro-batch; yields the token count this process divides its loss by.

    Without it (``context_parallel_size`` 1) it does nothing and yields None (the batch's own count).
    With it, accelerate cuts ``input_ids``, ``position_ids`` and ``shift_labels`` along the sequence in
    place, so each shard carries its global positions (RoPE-ID's spectrum and temperature see the true
    ones) and its own targets. Each process divides its shard's loss sum by the whole sequence's count
    over the shards: the gradients averaged over the shards are then those of the whole sequence's mean.
    """
    size = run.args.optimization.context_parallel_size
    if size == 1:
        yield None
        return
    num_tokens = int((batch["shift_labels"] != IGNORE_INDEX).sum())
    buffers = [batch["input_ids"], batch["position_ids"], batch["shift_labels"]]
    with run.accelerator.maybe_context_parallel(
        buffers=buffers, buffer_seq_dims=[1, 1, 1], no_restore_buffers=set(buffers)
    ):
        yield num_tokens / size


def optimizer_step(run: TrainingRun, group: list[Any]) -> float:
    """Forward and backward over the micro-batches of one step, then one optimizer step; returns the mean loss."""
    import torch

    accelerator, model = run.accelerator, run.model
    losses = []
    for i, micro_batch in enumerate(group):
        # Gradients are synchronised across processes only on the last micro-batch.
        sync = accelerator.no_sync(model) if i + 1 < len(group) else contextlib.nullcontext()
        with sync, sequence_shards(run, micro_batch) as num_tokens, accelerator.autocast():
            loss = causal_lm_loss(model, micro_batch, num_tokens)
            accelerator.backward(loss / len(group))
        losses.append(loss.detach())
    if run.args.optimization.max_grad_norm:
        accelerator.clip_grad_norm_(run.parameters, run.args.optimization.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    run.last_loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
    return run.last_loss


def save_checkpoint(run: TrainingRun) -> Path:
    """``checkpoints/step-N``: every process writes its part into one shared partial folder, then it is swapped in."""
    accelerator, run_args = run.accelerator, run.args.run
    final = run.out / "checkpoints" / f"{CHECKPOINT_PREFIX}{run.step:06d}"
    shared = partial_path(final, "all-ranks")  # every process must name the same folder
    writing = (
        atomic_directory(final, force=True, partial=shared)
        if accelerator.is_main_process
        else contextlib.nullcontext(shared)
    )
    with writing as partial:
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json_atomic(partial / TRAINER_STATE, {"step": run.step, "args": run.args.to_json()})
    if accelerator.is_main_process and run_args.save_total_limit:
        for old in list_checkpoints(run.out)[: -run_args.save_total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def finish(run: TrainingRun) -> dict[str, Any]:
    """Writes the adapter (or full model) with a training summary; returns the summary and the trained ``model``."""
    accelerator, args = run.accelerator, run.args
    result_dir = run.out / ("model" if args.adapter.full_finetune else "adapter")
    # Every process takes part in gathering the weights (FSDP shards them); the main process writes them once.
    state_dict = accelerator.get_state_dict(run.model)
    summary = {
        "steps": run.step,
        "final_loss": run.last_loss,
        "final_eval": run.last_eval,
        "base_model": run.base_reference,
        "converted_here": run.converted,
        "processes": accelerator.num_processes,
        "distributed_type": accelerator.distributed_type.value,
        "args": args.to_json(),
    }
    if accelerator.is_main_process:
        final_model = accelerator.unwrap_model(run.model)
        if not args.adapter.full_finetune:
            final_model.peft_config["default"].base_model_name_or_path = run.base_reference
        with atomic_directory(result_dir, force=True) as partial:
            final_model.save_pretrained(partial, state_dict=state_dict)
            run.tokenizer.save_pretrained(partial)
            write_json_atomic(partial / "training_summary.json", summary)
    accelerator.wait_for_everyone()
    if run.trackers:
        accelerator.end_training()
    return {
        "output_dir": str(run.out),
        "result_dir": str(result_dir),
        "base_model": run.base_reference,
        "steps": run.step,
        "final_loss": run.last_loss,
        "final_eval": run.last_eval,
        "model": accelerator.unwrap_model(run.model),
    }


def train(args: FinetuneArguments) -> dict[str, Any]:
    """Runs (or resumes) one training run; returns a summary (final metrics, output paths, the trained ``model``)."""
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    run = setup_run(args)
    run_args, tokens_per_micro_batch = (
        args.run,
        args.optimization.batch_size * args.data.seq_length * run.accelerator.num_processes,
    )
    if run.step == 0:
        set_seed(
            args.optimization.seed, device_specific=True
        )  # distinct dropout per process; a resume restores the RNG instead
        if run_args.eval_at_start:
            run.last_eval = evaluate(run)
    progress = tqdm(
        total=run.total_steps,
        initial=run.step,
        disable=not run.accelerator.is_local_main_process,
        desc="finetune",
        unit="step",
    )
    for epoch, group in accumulation_groups(run) if run.step < run.total_steps else ():
        started = time.perf_counter()
        loss = optimizer_step(run, group)
        tokens_per_s = tokens_per_micro_batch * len(group) / (time.perf_counter() - started)
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:.0f}")
        if run.step % run_args.log_every == 0 or run.step == run.total_steps:
            log_metrics(
                run,
                {
                    "step": run.step,
                    "epoch": epoch,
                    "loss": loss,
                    "lr": run.scheduler.get_last_lr()[0],
                    "tokens_per_s": tokens_per_s,
                },
            )
        if run_args.eval_every and run.step % run_args.eval_every == 0:
            run.last_eval = evaluate(run)
        if run_args.save_every and run.step % run_args.save_every == 0:
            save_checkpoint(run)
        if run.step >= run.total_steps:
            break
    progress.close()
    if not run_args.eval_every or run.step % run_args.eval_every:
        run.last_eval = evaluate(run) or run.last_eval
    return finish(run)
