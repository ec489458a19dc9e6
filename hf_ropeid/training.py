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
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .conversion import parse_rotary_fraction
from .data import DataError, DataSource, build_training_blocks, load_held_out, window_tokens

logger = logging.getLogger(__name__)

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
EMBEDDING_AND_NORM_MODULES = ["embed_tokens", "norm"]  # suffix match: also every *_layernorm
SCHEDULERS = ("cosine", "linear", "constant")
MIXED_PRECISION = ("no", "bf16", "fp16")
TRACKERS = ("tensorboard", "wandb")
CHECKPOINT_PREFIX = "step-"
TRAINER_STATE = "trainer_state.json"
# Arguments that may change when resuming without changing what the run computes.
RESUMABLE_CHANGES = {"max_steps", "num_epochs", "eval_every", "save_every", "save_total_limit", "log_every",
                     "resume_from", "report_to", "force", "output_dir", "eval_at_start", "num_proc"}


class TrainingError(ValueError):
    """Training cannot start or continue; the message says what was wrong and what is accepted."""


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass
class FinetuneArguments:
    """Everything ``hf-ropeid finetune`` accepts; each field is one command-line option."""

    model: str = _help("RoPE-ID folder or Hub id, or a plain Llama folder / Hub id (converted first, see --convert).")
    data: list[str] = _help("Training text: files (.txt .md .py .jsonl .json .parquet), folders, globs, or one datasets name.")
    output_dir: str = _help("Where the adapter, checkpoints and log go.")
    # conversion of a plain Llama checkpoint
    convert: bool = _help("Convert a plain Llama checkpoint to RoPE-ID before training (--no-convert trains it as it is, e.g. a control run).", default=True)
    spectrum: str | None = _help("RoPE-ID spectrum for the conversion: rope_id | original | minimal.", default=None)
    rotary_fraction: str | None = _help("Fraction of each head that rotates, or 'auto' (conversion).", default=None)
    training_length: int | None = _help("L of the RoPE-ID spectrum (conversion; default: the model's max_position_embeddings).", default=None)
    shortest_period: float | None = _help("Period in tokens of the fastest rotated pair (conversion).", default=None)
    turns_per_training_length: float | None = _help("Turns of the slowest pair inside L (conversion).", default=None)
    temperature: str | None = _help("Query temperature beyond L: query_log | length_log | none (conversion).", default=None)
    channel_selection: str = _help("Which channel pairs keep rotating in the conversion.", default="frequency")
    trust_remote_code: bool = _help("Allow remote code for models that are neither Llama nor RoPE-ID.", default=False)
    # data
    eval_data: list[str] = _help("Held-out text (same forms as --data); else --eval-fraction of the training documents.", default_factory=list)
    eval_fraction: float = _help("Fraction of training documents held out when no --eval-data is given.", default=0.0)
    text_field: str = _help("Column holding the text in jsonl / parquet / datasets data.", default="text")
    dataset_config: str | None = _help("Config name of a datasets dataset.", default=None)
    seq_length: int = _help("Tokens per training sequence.", default=1024)
    eval_lengths: list[int] = _help("Lengths at which held-out perplexity is measured (default: seq_length and 2*seq_length).", default_factory=list)
    eval_tokens: int = _help("Held-out tokens per evaluation length: eval_tokens // length windows (at least 1), each inside one document.", default=16384)
    num_proc: int | None = _help("Processes for tokenising.", default=None)
    # adapter
    full_finetune: bool = _help("Train every weight instead of a LoRA adapter.", default=False)
    lora_r: int = _help("LoRA rank.", default=16)
    lora_alpha: float = _help("LoRA alpha (scale = alpha / r).", default=32.0)
    lora_dropout: float = _help("Dropout on the LoRA input.", default=0.05)
    target_modules: list[str] = _help("Linear layers that get LoRA (names or 'all-linear').", default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    train_embeddings_and_norms: bool = _help("Also train embeddings and all norms (peft modules_to_save; LongLoRA's recipe for context extension).", default=False)
    # optimisation
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
    activation_checkpointing: bool = _help("Recompute activations in the backward pass (saves memory).", default=False)
    seed: int = _help("Seed for adapter init, data order and dropout.", default=0)
    # bookkeeping
    log_every: int = _help("Log training loss every N steps.", default=1)
    eval_every: int = _help("Evaluate every N steps (0: only at the end).", default=0)
    eval_at_start: bool = _help("Evaluate before the first step.", default=True)
    save_every: int = _help("Checkpoint every N steps (0: none).", default=0)
    save_total_limit: int | None = _help("Keep only the newest N checkpoints.", default=None)
    resume_from: str | None = _help("Checkpoint folder to continue from, or 'latest' (in output_dir).", default=None)
    report_to: list[str] = _help("Extra trackers: tensorboard, wandb (the JSON log is always written).", default_factory=list)
    force: bool = _help("Replace a non-empty output_dir.", default=False)

    def __post_init__(self) -> None:
        self.data = list(self.data)
        self.eval_data = list(self.eval_data)
        self.eval_lengths = [int(n) for n in self.eval_lengths] or [self.seq_length, 2 * self.seq_length]
        self.target_modules = list(self.target_modules)
        self.report_to = list(self.report_to)
        validate_arguments(self)

    def rope_id_parameters(self) -> dict[str, Any]:
        keys = ("spectrum", "rotary_fraction", "training_length", "shortest_period", "turns_per_training_length", "temperature")
        values = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        if "rotary_fraction" in values:
            values["rotary_fraction"] = parse_rotary_fraction(values["rotary_fraction"])
        return values

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate_arguments(a: FinetuneArguments) -> None:
    """Raises TrainingError for any out-of-range argument, naming it and what is accepted."""
    def need(condition: bool, message: str) -> None:
        if not condition:
            raise TrainingError(message)

    need(bool(a.data), "No training data: pass at least one --data file, folder, glob or datasets name.")
    need(a.seq_length >= 2, f"--seq-length must be at least 2, got {a.seq_length}.")
    need(all(n >= 2 for n in a.eval_lengths), f"--eval-lengths must all be at least 2, got {a.eval_lengths}.")
    need(a.eval_tokens >= 2, f"--eval-tokens must be at least 2, got {a.eval_tokens}.")
    try:
        parse_rotary_fraction(a.rotary_fraction)
    except ValueError as err:
        raise TrainingError(f"--rotary-fraction: {err}") from None
    need(0 <= a.eval_fraction < 1, f"--eval-fraction must be in [0, 1), got {a.eval_fraction}.")
    need(not (a.eval_data and a.eval_fraction), "Give either --eval-data or --eval-fraction, not both.")
    need(a.lora_r >= 1, f"--lora-r must be a positive integer, got {a.lora_r}.")
    need(a.lora_alpha > 0, f"--lora-alpha must be positive, got {a.lora_alpha}.")
    need(0 <= a.lora_dropout < 1, f"--lora-dropout must be in [0, 1), got {a.lora_dropout}.")
    need(bool(a.target_modules) or a.full_finetune, "--target-modules is empty; name at least one linear layer.")
    need(a.learning_rate > 0 and math.isfinite(a.learning_rate), f"--learning-rate must be positive, got {a.learning_rate}.")
    need(a.weight_decay >= 0, f"--weight-decay must be >= 0, got {a.weight_decay}.")
    need(a.lr_scheduler in SCHEDULERS, f"--lr-scheduler must be one of {', '.join(SCHEDULERS)}, got {a.lr_scheduler!r}.")
    need(a.warmup_steps >= 0, f"--warmup-steps must be >= 0, got {a.warmup_steps}.")
    need(a.max_steps is None or a.max_steps >= 1, f"--max-steps must be at least 1, got {a.max_steps}.")
    need(a.num_epochs > 0, f"--num-epochs must be positive, got {a.num_epochs}.")
    need(a.batch_size >= 1, f"--batch-size must be at least 1, got {a.batch_size}.")
    need(a.gradient_accumulation_steps >= 1, f"--gradient-accumulation-steps must be at least 1, got {a.gradient_accumulation_steps}.")
    need(a.max_grad_norm >= 0, f"--max-grad-norm must be >= 0, got {a.max_grad_norm}.")
    need(a.mixed_precision in MIXED_PRECISION, f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}, got {a.mixed_precision!r}.")
    for name in ("log_every", "eval_every", "save_every"):
        need(getattr(a, name) >= 0, f"--{name.replace('_', '-')} must be >= 0, got {getattr(a, name)}.")
    need(a.log_every >= 1, f"--log-every must be at least 1, got {a.log_every}.")
    need(a.save_total_limit is None or a.save_total_limit >= 1, f"--save-total-limit must be at least 1, got {a.save_total_limit}.")
    unknown = sorted(set(a.report_to) - set(TRACKERS))
    need(not unknown, f"Unknown --report-to tracker(s) {unknown}; accepted: {', '.join(TRACKERS)}.")


# ----------------------------------------------------------------------------- model


def load_base_model(args: FinetuneArguments, calibration_input_ids=None):
    """``(model, converted)``: the model to train, in float32, and whether it was converted here."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, trust_remote_code=args.trust_remote_code)
    if config.model_type == "llama" and args.convert:
        from .conversion import convert_model

        model = convert_model(model, channel_selection=args.channel_selection,
                              calibration_input_ids=calibration_input_ids, **args.rope_id_parameters())
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


def add_lora(model, args: FinetuneArguments):
    """Wraps ``model`` in a peft LoRA model; raises TrainingError if the targets match nothing."""
    from peft import LoraConfig, get_peft_model

    modules_to_save = list(EMBEDDING_AND_NORM_MODULES) if args.train_embeddings_and_norms else None
    targets: str | list[str] = "all-linear" if args.target_modules == ["all-linear"] else args.target_modules
    config = LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, target_modules=targets,
        modules_to_save=modules_to_save, task_type="CAUSAL_LM",
        # With tied embeddings a trainable copy of embed_tokens must stay tied to lm_head.
        ensure_weight_tying=bool(modules_to_save) and tied_embeddings(model),
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise TrainingError(f"LoRA targets {args.target_modules} do not fit the model ({err}). Linear layers: {linear}.") from err


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
    import torch

    input_ids = torch.tensor([row["input_ids"] for row in rows], dtype=torch.long)
    return {"input_ids": input_ids, "labels": input_ids}


# ----------------------------------------------------------------------------- files


def atomic_directory(target: Path, write, *, replace: bool = False) -> Path:
    """Calls ``write(tmp_dir)`` on a temporary folder beside ``target`` and renames it into place."""
    import tempfile

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        write(tmp)
        tmp.chmod(0o755)
        if target.exists():
            if not replace:
                raise FileExistsError(f"{target} already exists.")
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (with trainer_state.json), oldest first."""
    root = Path(output_dir) / "checkpoints"
    found = [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if (p / TRAINER_STATE).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def resolve_resume(args: FinetuneArguments) -> Path | None:
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
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k])
    if changed:
        details = "; ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise TrainingError(
            f"Cannot resume exactly: these arguments differ from the checkpoint's run: {details}. Only "
            f"{', '.join(sorted(RESUMABLE_CHANGES))} may change."
        )


# ----------------------------------------------------------------------------- evaluation


def evaluate_perplexity(model, windows_by_length: dict[int, list[list[int]]], accelerator) -> dict[int, float]:
    """Perplexity per length over held-out windows, windows sharded across processes."""
    import torch

    was_training = model.training
    model.eval()
    results = {}
    with torch.no_grad():
        for length, windows in windows_by_length.items():
            totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # nll sum, token count
            mine = windows[accelerator.process_index :: accelerator.num_processes]
            # Every process runs the same number of forwards (FSDP needs them in lockstep); padding counts 0.
            for i in range(math.ceil(len(windows) / accelerator.num_processes)):
                ids = torch.tensor([mine[i] if i < len(mine) else windows[0]], device=accelerator.device)
                with accelerator.autocast():
                    loss = model(input_ids=ids, labels=ids).loss
                weight = float(i < len(mine)) * (length - 1)
                totals += torch.tensor([loss.item() * weight, weight], dtype=torch.float64, device=accelerator.device)
            totals = accelerator.reduce(totals, reduction="sum")
            results[length] = math.exp(totals[0].item() / totals[1].item())
    model.train(was_training)
    return results


# ----------------------------------------------------------------------------- the run


class JsonLog:
    """``log.jsonl`` on the main process; on resume, records after the resumed step are dropped."""

    def __init__(self, path: Path, enabled: bool, keep_until_step: int | None):
        self.path, self.enabled = path, enabled
        if enabled and keep_until_step is not None and path.is_file():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= keep_until_step]
            tmp = path.with_name(f".{path.name}.partial")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_log(output_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _check_output_dir(args: FinetuneArguments) -> None:
    out = Path(args.output_dir)
    if args.resume_from is None and not args.force and out.exists() and any(out.iterdir()):
        raise TrainingError(f"{out} exists and is not empty; pass --force to replace it or --resume-from to continue.")


def _prepare_output_dir(args: FinetuneArguments, accelerator) -> Path:
    out = Path(args.output_dir)
    if accelerator.is_main_process and args.resume_from is None and out.exists() and any(out.iterdir()):
        shutil.rmtree(out)  # --force was given (checked by _check_output_dir)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if args.resume_from is None:
            write_json_atomic(out / "training_args.json", args.to_json())
    accelerator.wait_for_everyone()
    return out


def _trackers(args: FinetuneArguments) -> list[str]:
    import importlib.util

    usable = []
    for name in args.report_to:
        module = "torch.utils.tensorboard" if name == "tensorboard" else name
        try:
            found = importlib.util.find_spec(module) is not None and (name != "tensorboard" or importlib.util.find_spec("tensorboard"))
        except ModuleNotFoundError:
            found = False
        if found:
            usable.append(name)
        else:
            logger.warning("--report-to %s: the package is not installed; logging to log.jsonl only.", name)
    return usable


def train(args: FinetuneArguments) -> dict[str, Any]:
    """Runs (or resumes) one training run; returns a summary (final metrics, output paths, the trained ``model``)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    trackers = _trackers(args)
    accelerator = Accelerator(mixed_precision=args.mixed_precision, log_with=trackers or None,
                              project_dir=args.output_dir, step_scheduler_with_optimizer=False)
    _check_output_dir(args)
    resume_dir = resolve_resume(args)
    if resume_dir is not None:
        check_resume_compatible(json.loads((resume_dir / TRAINER_STATE).read_text())["args"], args)

    # Data first: it is cheap to fail on (before output_dir is touched), and a calibrated conversion needs a block.
    with accelerator.main_process_first():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
        source = DataSource(tuple(args.data), text_field=args.text_field, dataset_config=args.dataset_config)
        train_blocks, held_out = build_training_blocks(source, tokenizer, args.seq_length, seed=args.seed,
                                                       eval_fraction=args.eval_fraction, num_proc=args.num_proc)
        if args.eval_data:
            held_out = load_held_out(DataSource(tuple(args.eval_data), text_field=args.text_field,
                                                dataset_config=args.dataset_config), tokenizer, args.num_proc)
    windows_by_length = {}
    if held_out is not None:
        windows_by_length = {n: window_tokens(held_out, n, max(1, args.eval_tokens // n)) for n in args.eval_lengths}
    out = _prepare_output_dir(args, accelerator)

    set_seed(args.seed)  # adapter initialisation is identical on every process and every run
    with accelerator.main_process_first():
        calibration = torch.tensor([train_blocks[0]["input_ids"]]) if args.channel_selection != "frequency" else None
        model, converted = load_base_model(args, calibration)
    base_reference = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    if converted:
        base_dir = out / "base"
        if accelerator.is_main_process and not base_dir.exists():
            def write_base(tmp: Path) -> None:
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
            atomic_directory(base_dir, write_base)
        base_reference = str(base_dir.resolve())
    accelerator.wait_for_everyone()

    if args.activation_checkpointing:  # before peft wraps the model; non-reentrant, inputs require grad
        model.activation_checkpointing_enable()
    if args.full_finetune:
        model.requires_grad_(True)
    else:
        model = add_lora(model, args)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate,
                                  weight_decay=args.weight_decay)

    sampler = EpochShuffleSampler(len(train_blocks), args.seed)
    # The loader gets its own generator: starting an iterator draws from it, and a draw from the global RNG
    # would shift the dropout masks of a resumed run (which starts one more iterator than the original).
    dataloader = torch.utils.data.DataLoader(train_blocks, batch_size=args.batch_size, sampler=sampler,
                                             collate_fn=collate_blocks, drop_last=True,
                                             generator=torch.Generator().manual_seed(args.seed))
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    # Names and tensors as the prepared (possibly DDP- or FSDP-wrapped) model has them.
    trainable_names = {name for name, p in model.named_parameters() if p.requires_grad}
    parameters = [p for p in model.parameters() if p.requires_grad]
    micro_batches_per_epoch = len(dataloader)
    if micro_batches_per_epoch == 0:
        raise TrainingError(
            f"{len(train_blocks)} training blocks cannot fill one batch of {args.batch_size} x "
            f"{accelerator.num_processes} process(es); add data or lower --batch-size / --seq-length."
        )
    steps_per_epoch = math.ceil(micro_batches_per_epoch / args.gradient_accumulation_steps)
    total_steps = args.max_steps or max(1, math.ceil(args.num_epochs * steps_per_epoch))
    scheduler = get_scheduler("constant_with_warmup" if args.lr_scheduler == "constant" else args.lr_scheduler,
                              optimizer, num_warmup_steps=args.warmup_steps, num_training_steps=total_steps)
    scheduler = accelerator.prepare(scheduler)

    # Checkpoints hold only the trainable weights (the base never changes in a LoRA run).
    def save_trainable(models, weights, output_dir):
        for i, state in enumerate(weights):
            weights[i] = {k: v for k, v in state.items() if k in trainable_names}

    def load_trainable(models, input_dir):
        from safetensors.torch import load_file

        for i, model_ in enumerate(models):
            state = load_file(os.path.join(input_dir, "model.safetensors" if i == 0 else f"model_{i}.safetensors"))
            missing = trainable_names - set(state)
            if missing:
                raise TrainingError(f"Checkpoint {input_dir} lacks trainable weights {sorted(missing)[:5]}...")
            model_.load_state_dict(state, strict=False)
        models.clear()  # loaded here; accelerate must not load them again (strictly)

    accelerator.register_save_state_pre_hook(save_trainable)
    accelerator.register_load_state_pre_hook(load_trainable)

    completed = 0
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
        completed = json.loads((resume_dir / TRAINER_STATE).read_text())["step"]
        logger.info("Resumed from %s at step %d", resume_dir, completed)
    log = JsonLog(out / "log.jsonl", accelerator.is_main_process, completed if resume_dir is not None else None)
    if trackers:
        accelerator.init_trackers("hf-ropeid-finetune", config={k: str(v) for k, v in args.to_json().items()})

    def log_metrics(record: dict[str, Any]) -> None:
        log.write(record)
        if trackers:
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def run_eval(step: int) -> dict[str, float]:
        if not windows_by_length:
            return {}
        ppl = evaluate_perplexity(accelerator.unwrap_model(model), windows_by_length, accelerator)
        record = {"step": step, **{f"eval_ppl@{n}": v for n, v in ppl.items()}}
        log_metrics(record)
        return record

    def save_checkpoint(step: int) -> None:
        root = out / "checkpoints"
        final = root / f"{CHECKPOINT_PREFIX}{step:06d}"
        tmp = root / f".{final.name}.partial"
        if accelerator.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json_atomic(tmp / TRAINER_STATE, {"step": step, "args": args.to_json()})
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            if args.save_total_limit:
                for old in list_checkpoints(out)[: -args.save_total_limit]:
                    shutil.rmtree(old)
        accelerator.wait_for_everyone()

    last_eval: dict[str, float] = {}
    if completed == 0:
        set_seed(args.seed, device_specific=True)  # distinct dropout per process; a resume restores the RNG instead
        if args.eval_at_start:
            last_eval = run_eval(0)

    progress = tqdm(total=total_steps, initial=completed, disable=not accelerator.is_local_main_process,
                    desc="finetune", unit="step")
    tokens_per_micro_batch = args.batch_size * args.seq_length * accelerator.num_processes
    step = completed
    last_loss = float("nan")
    while step < total_steps:
        epoch, step_in_epoch = divmod(step, steps_per_epoch)
        dataloader.set_epoch(epoch)
        skip = step_in_epoch * args.gradient_accumulation_steps
        batches = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        group: list[Any] = []
        for index, batch in enumerate(batches, start=skip):
            group.append(batch)
            if len(group) < args.gradient_accumulation_steps and index + 1 < micro_batches_per_epoch:
                continue
            started = time.perf_counter()
            losses = []
            for i, micro_batch in enumerate(group):
                # Gradients are synchronised across processes only on the last micro-batch.
                sync = accelerator.no_sync(model) if i + 1 < len(group) else contextlib.nullcontext()
                with sync, accelerator.autocast():
                    loss = model(**micro_batch).loss
                    accelerator.backward(loss / len(group))
                losses.append(loss.detach())
            if args.max_grad_norm:
                accelerator.clip_grad_norm_(parameters, args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            last_loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
            elapsed = time.perf_counter() - started
            tokens_per_s = tokens_per_micro_batch * len(group) / elapsed
            progress.update(1)
            progress.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{tokens_per_s:.0f}")
            if step % args.log_every == 0 or step == total_steps:
                log_metrics({"step": step, "epoch": epoch, "loss": last_loss, "lr": scheduler.get_last_lr()[0],
                             "tokens_per_s": tokens_per_s})
            if args.eval_every and step % args.eval_every == 0:
                last_eval = run_eval(step)
            if args.save_every and step % args.save_every == 0:
                save_checkpoint(step)
            group = []
            if step >= total_steps:
                break
    progress.close()
    if not args.eval_every or step % args.eval_every:
        last_eval = run_eval(step) or last_eval

    result_dir = out / ("model" if args.full_finetune else "adapter")
    # Every process takes part in gathering the weights (FSDP shards them); the main process writes them once.
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        final_model = accelerator.unwrap_model(model)
        summary = {"steps": step, "final_loss": last_loss, "final_eval": last_eval, "base_model": base_reference,
                   "converted_here": converted, "processes": accelerator.num_processes, "args": args.to_json()}

        def write_result(tmp: Path) -> None:
            if not args.full_finetune:
                final_model.peft_config["default"].base_model_name_or_path = base_reference
            final_model.save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
            write_json_atomic(tmp / "training_summary.json", summary)

        atomic_directory(result_dir, write_result, replace=True)
    accelerator.wait_for_everyone()
    if trackers:
        accelerator.end_training()
    return {"output_dir": str(out), "result_dir": str(result_dir), "base_model": base_reference, "steps": step,
            "final_loss": last_loss, "final_eval": last_eval, "model": accelerator.unwrap_model(model)}


def _typer_signature():
    """``FinetuneArguments``' fields as typer options (``--lora-r``, repeated ``--data`` ...)."""
    import inspect
    import typing

    import typer

    hints = typing.get_type_hints(FinetuneArguments)
    parameters = []
    for f in dataclasses.fields(FinetuneArguments):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory() or None  # typer shows an empty list as "None"
        else:
            default = ...  # required
        option = typer.Option(default, help=f.metadata["help"], show_default=default not in (None, ...))
        parameters.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=hints[f.name]))
    return inspect.Signature(parameters)


def finetune_command(**options: Any) -> None:
    """LoRA (or full) continued training of a RoPE-ID model, or of a Llama converted on the fly."""
    import typer

    from .conversion import ConversionError
    from .rope_id import RopeIDParameterError

    try:
        args = FinetuneArguments(**{k: v for k, v in options.items() if v is not None or k in _NULLABLE})
        summary = train(args)
    except (TrainingError, DataError, ConversionError, RopeIDParameterError) as error:
        typer.secho(f"Error: {error}", err=True, fg="red")
        raise typer.Exit(code=1) from error
    from accelerate import PartialState

    summary.pop("model")
    if PartialState().is_main_process:
        typer.echo(json.dumps(summary, indent=2, default=str))


_NULLABLE = {f.name for f in dataclasses.fields(FinetuneArguments) if f.default is None}
finetune_command.__signature__ = _typer_signature()
