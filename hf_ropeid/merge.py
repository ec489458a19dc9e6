"""Merge a trained LoRA adapter into its base: a full checkpoint, written atomically, with a model card.

For a RoPE-ID base the result is a remote-code checkpoint like the converter's (modeling files,
full ``auto_map``, the rope settings in ``config.json``), plus ``finetuning.json`` (what was
trained, how, and the final held-out perplexities) and a README.md model card built from it.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from .atomic import atomic_directory, check_target, write_json_atomic
from .errors import HfRopeIDError, require
from .model_card import FINETUNING_RECORD, render_finetuned_card
from .utils import DTYPES

SUMMARY = "training_summary.json"


class MergeError(HfRopeIDError, ValueError):
    """The adapter cannot be merged; the message says what was wrong and what to do."""


def load_adapted_model(adapter_dir: str | os.PathLike, base: str | None = None, *, trust_remote_code: bool = False):
    """``(peft_model, base_reference)``: the base (float32) with the adapter loaded; errors if they do not match."""
    import torch

    require("peft", "train", "Loading a LoRA adapter")
    from peft import PeftConfig, PeftModel
    from peft.utils import get_peft_model_state_dict, load_peft_weights
    from transformers import AutoModelForCausalLM

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise MergeError(f"{adapter_dir} is not a peft adapter folder (no adapter_config.json).")
    config = PeftConfig.from_pretrained(adapter_dir)
    base = base or config.base_model_name_or_path
    if not base:
        raise MergeError(f"{adapter_dir}/adapter_config.json names no base model; pass --base.")
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise MergeError(
            f"Cannot load the base model {base!r}: {err}. Pass --base with the model the adapter was trained on."
        ) from err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            peft_model = PeftModel.from_pretrained(model, adapter_dir)
        except (RuntimeError, ValueError, KeyError) as err:  # size mismatches, targets that do not exist
            raise MergeError(f"The adapter in {adapter_dir} does not match the base {base!r}: {err}") from err
    missing = [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]
    stored = set(load_peft_weights(str(adapter_dir)))
    expected = set(get_peft_model_state_dict(peft_model))
    unexpected = sorted(stored - expected)
    if missing or unexpected:
        detail = missing[0][:300] if missing else f"weights for modules the base lacks: {unexpected[:4]}"
        raise MergeError(f"The adapter in {adapter_dir} does not match the base {base!r}: {detail}")
    return peft_model.eval(), base


def _training_record(adapter_dir: Path, base: str) -> dict[str, Any]:
    summary = json.loads((adapter_dir / SUMMARY).read_text()) if (adapter_dir / SUMMARY).is_file() else {}
    args = summary.get("args", {})
    return {
        "adapter": str(adapter_dir.resolve()),
        "base_model": base,
        "source_model": args.get("model", base),
        "steps": summary.get("steps"),
        "final_loss": summary.get("final_loss"),
        "final_eval": summary.get("final_eval") or {},
        "training": {
            k: args[k]
            for k in (
                "data",
                "eval_data",
                "seq_length",
                "lora_r",
                "lora_alpha",
                "lora_dropout",
                "target_modules",
                "train_embeddings_and_norms",
                "learning_rate",
                "lr_scheduler",
                "warmup_steps",
                "max_steps",
                "batch_size",
                "gradient_accumulation_steps",
                "mixed_precision",
                "seed",
                "channel_selection",
            )
            if k in args
        },
    }


def merge_adapter(
    adapter_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    base: str | None = None,
    dtype: str = "auto",
    force: bool = False,
    base_model: str | None = None,
    license: str | None = None,
    repo_id: str | None = None,
    trust_remote_code: bool = False,
    serving_length: int | None = None,
) -> Path:
    """Writes base + adapter, merged, to ``output_dir`` (atomically); returns the folder.

    ``dtype``: of the saved weights ("auto": the base's). ``base_model`` / ``license`` / ``repo_id``
    go into the model card's metadata and usage snippet. For a RoPE-ID base, ``serving_length`` (default 16 x
    L, as ``hf-ropeid convert``) is written as ``max_position_embeddings`` and the tokenizer's
    ``model_max_length``; L (``rope_parameters["training_length"]``) is unchanged.
    """
    import torch
    from transformers import AutoTokenizer

    if dtype != "auto" and dtype not in DTYPES:
        raise MergeError(f"dtype must be one of auto, {', '.join(DTYPES)}, got {dtype!r}.")
    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    check_target(output_dir, force)
    peft_model, base_reference = load_adapted_model(adapter_dir, base, trust_remote_code=trust_remote_code)
    merged = peft_model.merge_and_unload()
    target_dtype = dtype if dtype != "auto" else (getattr(merged.config, "dtype", None) or torch.float32)
    merged = merged.to(DTYPES.get(target_dtype, target_dtype) if isinstance(target_dtype, str) else target_dtype)
    tokenizer_source = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_reference
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=trust_remote_code)
    # base_model / license are kept in the record, so a later `hf-ropeid push` re-renders the same card
    record = {**_training_record(adapter_dir, base_reference), "base_model": base_model, "license": license}
    is_rope_id = merged.config.model_type == "llama_rope_id"
    if is_rope_id:
        from .conversion import ConversionError, resolve_serving_length

        try:
            length = resolve_serving_length(serving_length, merged.config.rope_parameters["training_length"])
        except ConversionError as error:
            raise MergeError(str(error)) from None
        merged.config.max_position_embeddings = length
        tokenizer.model_max_length = length

    with atomic_directory(output_dir, force=force) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / FINETUNING_RECORD, record)
        if is_rope_id:
            card = render_finetuned_card(
                tmp, record, model_name=output_dir.name, repo_id=repo_id, base_model=base_model, license=license
            )
            (tmp / "README.md").write_text(card)
    return output_dir
