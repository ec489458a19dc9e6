"""Model cards (README.md) for converted and for fine-tuned (merged) checkpoints, from ``model_cards/`` templates.

The templates live in the repository's ``model_cards/`` folder; ``hf_ropeid/templates`` is a
symlink to it, so they are package data in an installed wheel too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .atomic import write_text_atomic
from .utils import head_dim_of

TEMPLATES = Path(__file__).resolve().parent / "templates"
DEFAULT_TEMPLATE = TEMPLATES / "rope_id_model_card.md"
FINETUNED_TEMPLATE = TEMPLATES / "rope_id_finetuned_model_card.md"
FINETUNING_RECORD = "finetuning.json"  # written by ``hf-ropeid merge``: what was trained, how, final perplexities
TAGS = ("custom_code", "rope-id", "long-context", "llama")


def source_license(source: str | os.PathLike) -> str | None:
    """The ``license`` of the source's model card (README.md YAML), if it has one."""
    from huggingface_hub.repocard import metadata_load

    readme = Path(source) / "README.md"
    try:
        return (metadata_load(readme) or {}).get("license") if readme.is_file() else None
    except ValueError:  # malformed YAML: no license to carry over
        return None


def describe_positions(rope_parameters: Mapping[str, Any], head_dim: int) -> str:
    """One paragraph saying, in words, what the positional encoding does."""
    import torch

    from .rope_id import RopeIDParameters, inv_freq, original_inv_freq

    p = rope_parameters
    pairs = head_dim // 2
    rotated = int(round(p["rotary_fraction"] * pairs))
    length, turns = p["training_length"], p["turns_per_training_length"]
    params = RopeIDParameters.from_rope_parameters(dict(p), head_dim=head_dim, default_training_length=length)
    original = original_inv_freq(head_dim, p["rope_theta"])[:rotated]
    kept = int(torch.isclose(inv_freq(params)[:rotated], original, rtol=1e-12, atol=0).sum())
    spectra = {
        "rope_id": f"RoPE-ID's spectrum (periods from {p['shortest_period']:g} tokens geometrically up to "
        f"{length / turns:g} tokens, so every rotated pair completes at least {turns:g} turns inside {length} tokens)",
        "original": "their original RoPE frequencies",
        "minimal": f"their original RoPE frequencies where those complete {turns:g} turns inside {length} tokens "
        f"({kept} pairs); the {rotated - kept} slower ones are sped up to periods of about {length / turns:g} tokens",
    }
    text = (
        f"Per attention head, {rotated} of {pairs} channel pairs rotate with {spectra[p['spectrum']]}; "
        f"the other {pairs - rotated} are not rotated (NoPE). Training length L = {length}."
    )
    temperature = {
        "query_log": f" Queries at position p > L are multiplied by (1 + {p['temperature_coefficient']:g} ln(p/L))^2.",
        "length_log": " Queries at position p > L are multiplied by ln(p)/ln(L).",
        "floor_log": f" Queries at 0-based position i >= L are multiplied by 1 + {p['temperature_coefficient']:g} ln(1 + floor(i/L)) "
        "(llama.cpp's Llama-4 temperature).",
        "ssmax": " Queries at every position p are multiplied by ln(max(p, 2))/ln(L) (Scalable-Softmax; the model is "
        "trained with it).",
        "none": " No attention temperature.",
    }
    text += temperature[p["temperature"]]
    if p["temperature"] != "none" and p.get("temperature_channels") == "unrotated":
        text += " The temperature multiplies the unrotated channels only."
    if p.get("rotary_window"):
        text += f" Keys {p['rotary_window']} or more tokens before the query are scored by the unrotated pairs only"
        text += " (far-field bias: log_count)." if p.get("far_field") == "log_count" else "."
        if p.get("local_layers"):
            layers = list(p["local_layers"])
            which = f"Layer {layers[0]} attends" if len(layers) == 1 else (
                f"Layers {', '.join(str(i) for i in layers)} attend")
            text += (f" {which} only to the last {p['rotary_window']} keys and the first key (sliding window), "
                     "without temperature.")
        text += (" This attention runs in transformers (attn_implementation 'sdpa' or 'eager') only: vLLM, llama.cpp "
                 "and flash-attention refuse it (hf-ropeid's `--recipe portable` converts for them).")
    return text


def perplexity_table(verification: Mapping[str, Any] | None) -> str | None:
    """A markdown table of source vs converted perplexity from a ``verification.json`` report."""
    results = (verification or {}).get("perplexity")
    if not results:
        return None
    source = results.get("source", {})
    lines = ["| tokens per window | source perplexity | converted perplexity | windows |", "|---|---|---|---|"]
    for length, converted in results["converted"].items():
        if converted is None:
            continue
        original = source.get(length)
        before = f"{original['perplexity']:.2f}" if original else "-"
        lines.append(f"| {length} | {before} | {converted['perplexity']:.2f} | {converted['windows']} |")
    text = verification.get("text", {})
    lines.append(
        f"\nNon-overlapping windows from the start of `{text.get('file', '?')}`, each scored as an independent "
        "sequence (measured by the converter's verification, in a process without hf-ropeid)."
    )
    return "\n".join(lines)


def perplexity_results(
    perplexities: Mapping[str, float], dataset: str, description: str
) -> list[dict[str, Any]]:
    """``EvalResult`` keyword arguments for ``{window length: perplexity}`` (the card's model-index)."""
    return [
        {
            "task_type": "text-generation",
            "task_name": "Language modelling",
            "dataset_type": dataset,
            "dataset_name": dataset,
            "metric_type": "perplexity",
            "metric_name": f"perplexity, {length}-token windows ({description})",
            "metric_value": round(float(value), 4),
            "verified": False,
        }
        for length, value in perplexities.items()
    ]


def verification_results(verification: Mapping[str, Any] | None) -> list[dict[str, Any]] | None:
    """The converted model's perplexities of a ``verification.json`` report as model-index results, if any."""
    results = (verification or {}).get("perplexity") or {}
    converted = {k: v["perplexity"] for k, v in (results.get("converted") or {}).items() if v}
    if not converted:
        return None
    text = (verification.get("text") or {}).get("file", "text")
    return perplexity_results(converted, text, "converter's verification") or None


def render_model_card(
    *,
    model_name: str,
    rope_parameters: Mapping[str, Any],
    head_dim: int,
    channel_selection: str,
    source: str,
    base_model: str | None = None,
    license: str | None = None,
    repo_id: str | None = None,
    eval_table: str | None = None,
    extra_rows: Mapping[str, Any] | None = None,
    tags: tuple[str, ...] = TAGS,
    template: str | os.PathLike = DEFAULT_TEMPLATE,
    provenance: str | None = None,
    base_model_relation: str = "finetune",
    datasets: list[str] | None = None,
    eval_results: list[Mapping[str, Any]] | None = None,
    revision: str | None = None,
) -> str:
    """The README.md text: YAML metadata, description, usage with trust_remote_code, parameters, evaluation.

    ``eval_table`` is markdown placed under "Evaluation" (omitted when None); ``extra_rows`` adds
    rows to the conversion table (e.g. fine-tuning settings). ``base_model_relation`` ("finetune" for
    converted and merged checkpoints: full weights, changed positions) is written with ``base_model``;
    ``eval_results`` (keyword arguments of ``huggingface_hub.EvalResult``) become the ``model-index``;
    ``revision`` pins the usage snippet to that branch or commit.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    card_data = ModelCardData(
        model_name=(repo_id.split("/")[-1] if repo_id else model_name) if eval_results else None,
        base_model=base_model,
        base_model_relation=base_model_relation if base_model else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        license=license,
        tags=list(tags),
        datasets=list(datasets) if datasets else None,
        eval_results=[EvalResult(**result) for result in eval_results] if eval_results else None,
    )
    rows = {"channel selection": channel_selection}
    rows.update({f"`{k}`": v for k, v in rope_parameters.items() if k != "rope_type" and v is not None})
    rows.update(extra_rows or {})
    card = ModelCard.from_template(
        card_data,
        template_path=str(template),
        model_name=model_name,
        source=source,
        repo_id=repo_id or f"path/to/{model_name}",
        channel_selection=channel_selection,
        positions=describe_positions(rope_parameters, head_dim),
        conversion_rows=[(k, _cell(v)) for k, v in rows.items()],
        eval_table=eval_table,
        provenance=provenance,
        revision=revision if repo_id else None,
    )
    return str(card).rstrip("\n") + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_model_card(
    folder: str | os.PathLike,
    conversion: Mapping[str, Any] | None = None,
    verification: Mapping[str, Any] | None = None,
    *,
    model_name: str | None = None,
    repo_id: str | None = None,
    revision: str | None = None,
) -> Path:
    """(Re)writes ``folder/README.md`` from the folder's conversion.json and verification.json."""
    folder = Path(folder)
    if conversion is None:
        conversion = json.loads((folder / "conversion.json").read_text())
    if verification is None and (folder / "verification.json").is_file():
        verification = json.loads((folder / "verification.json").read_text())
    extra = {"dtype": conversion["dtype"]}
    if conversion.get("calibration"):
        calibration = conversion["calibration"]
        extra["calibration text"] = f"{calibration['text']} ({calibration['tokens']} tokens)"
    text = render_model_card(
        model_name=model_name or conversion.get("model_name") or folder.name,
        rope_parameters=conversion["rope_parameters"],
        head_dim=conversion["head_dim"],
        channel_selection=conversion["channel_selection"],
        source=conversion["source"],
        base_model=conversion.get("base_model"),
        license=conversion.get("license"),
        repo_id=repo_id,
        eval_table=perplexity_table(verification),
        extra_rows=extra,
        provenance=describe_provenance(conversion.get("source_provenance")),
        eval_results=verification_results(verification),
        revision=revision,
    )
    return write_text_atomic(folder / "README.md", text)


def describe_provenance(provenance: Mapping[str, Any] | None) -> str | None:
    """One sentence on where the source weights came from (e.g. dequantised from a 4-bit GGUF), if recorded."""
    if not provenance:
        return None
    if provenance.get("description"):
        return str(provenance["description"])
    return ", ".join(f"{k}: {v}" for k, v in provenance.items())


# ----------------------------------------------------------------------------------------------
# Fine-tuned (merged) checkpoints


def render_finetuned_card(
    folder: Path,
    record: dict[str, Any],
    *,
    model_name: str,
    repo_id: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
    revision: str | None = None,
) -> str:
    """README.md for a merged RoPE-ID checkpoint, through model_card.render_model_card."""
    config = json.loads((folder / "config.json").read_text())
    head_dim = head_dim_of(config)
    training = record["training"]
    rows = {
        "fine-tuning": f"LoRA r={training.get('lora_r')}, alpha={training.get('lora_alpha')} on "
        f"{', '.join(training.get('target_modules', []))}"
        + (" + embeddings and norms" if training.get("train_embeddings_and_norms") else "")
        + ", merged",
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
        eval_table = (
            "| tokens per window | perplexity after fine-tuning |\n|---|---|\n"
            + "\n".join(f"| {k.split('@')[1]} | {v:.2f} |" for k, v in evals.items())
            + f"\n\nHeld-out text: {held_out}."
        )
    return render_model_card(
        model_name=model_name if repo_id is None else repo_id.split("/")[-1],
        rope_parameters=config["rope_parameters"],
        head_dim=head_dim,
        channel_selection=training.get("channel_selection", "frequency"),
        source=record["source_model"],
        base_model=base_model,
        license=license,
        repo_id=repo_id,
        eval_table=eval_table,
        extra_rows=rows,
        template=FINETUNED_TEMPLATE,
        datasets=[d for d in training.get("data", []) if _looks_like_hub_dataset(d)] or None,
        eval_results=perplexity_results(
            {k.split("@")[1]: v for k, v in evals.items()}, "held-out", "held-out text after fine-tuning"
        ) or None,
        revision=revision,
    )


def _looks_like_hub_dataset(name: Any) -> bool:
    """``org/name`` that is not a local path: a Hub dataset id the card can name under ``datasets``."""
    import re

    return isinstance(name, str) and bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not Path(name).exists()


def write_finetuned_model_card(
    folder: str | os.PathLike,
    *,
    repo_id: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
    revision: str | None = None,
) -> Path:
    """(Re)writes ``folder/README.md`` of a merged checkpoint from its finetuning.json (e.g. naming ``repo_id``).

    ``base_model`` / ``license`` default to the ones given at merge time.
    """
    folder = Path(folder)
    record = json.loads((folder / FINETUNING_RECORD).read_text())
    base_model = base_model if base_model is not None else record.get("base_model")
    license = license if license is not None else record.get("license")
    text = render_finetuned_card(
        folder, record, model_name=folder.name, repo_id=repo_id, base_model=base_model, license=license,
        revision=revision,
    )
    return write_text_atomic(folder / "README.md", text)
