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
from typing import Annotated, Any, Optional

import typer

from .training import atomic_directory, write_json_atomic

DTYPES = ("auto", "float32", "bfloat16", "float16")
FINETUNED_TEMPLATE = Path(__file__).resolve().parent / "templates" / "rope_id_finetuned_model_card.md"
SUMMARY = "training_summary.json"
FINETUNING_RECORD = "finetuning.json"


class MergeError(ValueError):
    """The adapter cannot be merged; the message says what was wrong and what to do."""


def load_adapted_model(adapter_dir: str | os.PathLike, base: str | None = None, *, trust_remote_code: bool = False):
    """``(peft_model, base_reference)``: the base (float32) with the adapter loaded; errors if they do not match."""
    import torch
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
        raise MergeError(f"Cannot load the base model {base!r}: {err}. Pass --base with the model the adapter was trained on.") from err
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
        "training": {k: args[k] for k in (
            "data", "eval_data", "seq_length", "lora_r", "lora_alpha", "lora_dropout", "target_modules",
            "train_embeddings_and_norms", "learning_rate", "lr_scheduler", "warmup_steps", "max_steps",
            "batch_size", "gradient_accumulation_steps", "mixed_precision", "seed", "channel_selection") if k in args},
    }


def render_finetuned_card(folder: Path, record: dict[str, Any], *, model_name: str, repo_id: str | None = None,
                          base_model: str | None = None, license: str | None = None) -> str:
    """README.md for a merged RoPE-ID checkpoint, through model_card.render_model_card."""
    from .model_card import render_model_card

    config = json.loads((folder / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    training = record["training"]
    rows = {
        "fine-tuning": f"LoRA r={training.get('lora_r')}, alpha={training.get('lora_alpha')} on "
        f"{', '.join(training.get('target_modules', []))}"
        + (" + embeddings and norms" if training.get("train_embeddings_and_norms") else "") + ", merged",
        "steps x tokens": f"{record['steps']} x {training.get('batch_size', 1) * training.get('gradient_accumulation_steps', 1)}"
        f" x {training.get('seq_length')}",
        "learning rate": f"{training.get('learning_rate')} ({training.get('lr_scheduler')}, warmup {training.get('warmup_steps')})",
        "training data": ", ".join(Path(d).name for d in training.get("data", [])[:5])
        + (" ..." if len(training.get("data", [])) > 5 else ""),
    }
    evals = {k: v for k, v in record["final_eval"].items() if k.startswith("eval_ppl@")}
    eval_table = None
    if evals:
        held_out = ", ".join(Path(d).name for d in training.get("eval_data", [])) or "held-out training documents"
        eval_table = "| tokens per window | perplexity after fine-tuning |\n|---|---|\n" + "\n".join(
            f"| {k.split('@')[1]} | {v:.2f} |" for k, v in evals.items()) + f"\n\nHeld-out text: {held_out}."
    return render_model_card(
        model_name=model_name if repo_id is None else repo_id.split("/")[-1],
        rope_parameters=config["rope_parameters"], head_dim=head_dim,
        channel_selection=training.get("channel_selection", "frequency"), source=record["source_model"],
        base_model=base_model, license=license, repo_id=repo_id, eval_table=eval_table, extra_rows=rows,
        template=FINETUNED_TEMPLATE,
    )


def merge_adapter(adapter_dir: str | os.PathLike, output_dir: str | os.PathLike, *, base: str | None = None,
                  dtype: str = "auto", force: bool = False, base_model: str | None = None, license: str | None = None,
                  repo_id: str | None = None, trust_remote_code: bool = False) -> Path:
    """Writes base + adapter, merged, to ``output_dir`` (atomically); returns the folder.

    ``dtype``: of the saved weights ("auto": the base's). ``base_model`` / ``license`` / ``repo_id``
    go into the model card's metadata and usage snippet.
    """
    import torch
    from transformers import AutoTokenizer

    if dtype not in DTYPES:
        raise MergeError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not force:
        raise MergeError(f"{output_dir} exists and is not empty; pass --force to replace it.")
    peft_model, base_reference = load_adapted_model(adapter_dir, base, trust_remote_code=trust_remote_code)
    merged = peft_model.merge_and_unload()
    target_dtype = dtype if dtype != "auto" else (getattr(merged.config, "dtype", None) or torch.float32)
    merged = merged.to(getattr(torch, target_dtype) if isinstance(target_dtype, str) else target_dtype)
    tokenizer_source = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_reference
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=trust_remote_code)
    # base_model / license are kept in the record, so a later `hf-ropeid push` re-renders the same card
    record = {**_training_record(adapter_dir, base_reference), "base_model": base_model, "license": license}
    is_rope_id = merged.config.model_type == "llama_rope_id"

    def write(tmp: Path) -> None:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / FINETUNING_RECORD, record)
        if is_rope_id:
            card = render_finetuned_card(tmp, record, model_name=output_dir.name, repo_id=repo_id,
                                         base_model=base_model, license=license)
            (tmp / "README.md").write_text(card)

    return atomic_directory(output_dir, write, replace=force)


def write_finetuned_model_card(folder: str | os.PathLike, *, repo_id: str | None = None,
                               base_model: str | None = None, license: str | None = None) -> Path:
    """(Re)writes ``folder/README.md`` of a merged checkpoint from its finetuning.json (e.g. naming ``repo_id``).

    ``base_model`` / ``license`` default to the ones given at merge time.
    """
    folder = Path(folder)
    record = json.loads((folder / FINETUNING_RECORD).read_text())
    base_model = base_model if base_model is not None else record.get("base_model")
    license = license if license is not None else record.get("license")
    readme = folder / "README.md"
    partial = folder / ".README.md.partial"
    partial.write_text(render_finetuned_card(folder, record, model_name=folder.name, repo_id=repo_id,
                                             base_model=base_model, license=license))
    os.replace(partial, readme)
    return readme


def merge_command(
    adapter: Annotated[Path, typer.Argument(help="Adapter folder written by `hf-ropeid finetune` (output_dir/adapter).")],
    output: Annotated[Path, typer.Argument(help="Folder for the merged checkpoint.")],
    base: Annotated[Optional[str], typer.Option(help="Base model folder or Hub id. Default: the one the adapter names.")] = None,
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | float16 | auto (the base's).")] = "auto",
    force: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
    base_model: Annotated[Optional[str], typer.Option(help="Hub id of the source model, for the model card.")] = None,
    license: Annotated[Optional[str], typer.Option(help="License for the model card.")] = None,
    push_to_hub: Annotated[Optional[str], typer.Option(help="Push the merged folder to this Hub repo (org/name).")] = None,
    private: Annotated[bool, typer.Option("--private/--public", help="Create the Hub repo private.")] = True,
    revision: Annotated[Optional[str], typer.Option(help="Branch to push to (created if missing).")] = None,
    create_pr: Annotated[bool, typer.Option(help="Open a pull request instead of committing.")] = False,
) -> None:
    """Merge a LoRA adapter into its base: a full checkpoint with remote code and a model card; optionally push it."""
    from .hub import HubError, push_to_hub as push

    try:
        folder = merge_adapter(adapter, output, base=base, dtype=dtype, force=force, base_model=base_model,
                               license=license, repo_id=push_to_hub)
        typer.echo(str(folder))
        if push_to_hub:
            typer.echo(push(folder, push_to_hub, private=private, revision=revision, create_pr=create_pr,
                            commit_message=f"Upload {folder.name} (RoPE-ID + LoRA, merged, by hf-ropeid)"))
    except (MergeError, HubError) as error:
        typer.secho(f"Error: {error}", err=True, fg="red")
        raise typer.Exit(code=1) from error
