"""The whole evaluation: every positional variant at every length, on the same weights.

``run_evaluation(model, tokenizer, settings)`` evaluates every requested variant (see
``baselines``) at every length and returns one JSON-ready dict, which ``report.write_report``
writes. Perplexity uses non-overlapping windows of exactly ``n`` tokens cut from one token stream
(the same text at every length and for every variant).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..utils import DTYPES
from .baselines import build_variant, default_variants, training_length, variant_rope_parameters
from .diagnostics import diagnose
from .errors import EvaluationError
from .passes import perplexity_at_length
from .retrieval import prepare_tasks, score_task
from .text import default_text_paths, make_windows, prepends_bos, read_documents, token_stream


@dataclass
class EvalSettings:
    """Everything ``run_evaluation`` needs besides the model; JSON-serialisable (saved with the results)."""

    lengths: list[int] = field(default_factory=list)  # empty: L/2 .. 16L, doubling
    variants: list[str] = field(default_factory=list)  # empty: every variant the checkpoint allows
    training_length: int | None = None  # None: read from the config
    tokens_per_length: int = 16384
    batch_size: int = 8
    token_budget: int = 32768
    position_buckets: int = 32
    dynamic_factor: float = 2.0
    retrieval: bool = True
    retrieval_tasks: list[str] = field(default_factory=lambda: ["passkey", "multikey"])
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    retrieval_samples: int = 4
    needles: int = 4
    retrieval_template: str = "standard"  # "compact": no instruction, for short training lengths
    diagnostics: bool = True
    diagnostic_layers: list[int] | None = None  # None: first, middle, last
    diagnostic_heads: list[int] | None = None  # None: all query heads
    diagnostic_queries: int = 256
    seed: int = 0


def default_lengths(length: int, smallest: float = 0.5, largest: float = 16.0) -> list[int]:
    """``L/2, L, 2L, ... 16L``."""
    out, factor = [], smallest
    while factor <= largest:
        out.append(max(2, int(round(length * factor))))
        factor *= 2
    return out


def resolve_settings(config, settings: EvalSettings) -> EvalSettings:
    """Fills the defaults that depend on the model and checks the rest."""
    length = int(settings.training_length or training_length(config))
    lengths = sorted(set(settings.lengths or default_lengths(length)))
    if any(n < 2 for n in lengths):
        raise EvaluationError(f"Every length must be at least 2 tokens, got {lengths}.")
    variants = list(dict.fromkeys(settings.variants or default_variants(config)))
    for variant in variants:
        variant_rope_parameters(config, variant, length, length=length)  # raises BaselineError with the reason
    if not all(0.0 <= d <= 1.0 for d in settings.depths):
        raise EvaluationError(f"Depths are fractions of the haystack in [0, 1], got {settings.depths}.")
    bad_layers = [x for x in settings.diagnostic_layers or [] if not 0 <= x < config.num_hidden_layers]
    bad_heads = [h for h in settings.diagnostic_heads or [] if not 0 <= h < config.num_attention_heads]
    if bad_layers or bad_heads:
        raise EvaluationError(
            f"Diagnostic layers must be in 0..{config.num_hidden_layers - 1} and heads in "
            f"0..{config.num_attention_heads - 1}; got layers {bad_layers or 'ok'}, heads {bad_heads or 'ok'}."
        )
    for name, value in (
        ("batch_size", settings.batch_size),
        ("token_budget", settings.token_budget),
        ("tokens_per_length", settings.tokens_per_length),
    ):
        if value < 1:
            raise EvaluationError(f"{name} must be at least 1, got {value}.")
    return EvalSettings(**{**asdict(settings), "lengths": lengths, "variants": variants, "training_length": length})


def run_evaluation(
    model,
    tokenizer,
    settings: EvalSettings,
    *,
    text: torch.Tensor | None = None,
    haystack: torch.Tensor | None = None,
    text_paths: Sequence[str | Path] | None = None,
    haystack_paths: Sequence[str | Path] | None = None,
    text_field: str = "text",
    model_name: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluates every variant at every length; returns the results dict that ``write_report`` writes.

    ``text`` / ``haystack`` are token streams; when missing they are read from ``text_paths`` /
    ``haystack_paths`` (default: the Python standard library's source; the haystack defaults to
    the evaluation text).
    """
    from tqdm.auto import tqdm

    settings = resolve_settings(model.config, settings)
    lengths, L = settings.lengths, settings.training_length
    windows_per_length = {n: max(1, math.ceil(settings.tokens_per_length / n)) for n in lengths}
    if text is None:
        needed = max(n * windows_per_length[n] for n in lengths)
        text = token_stream(tokenizer, read_documents(text_paths or default_text_paths(), text_field), needed)
    if haystack is None and haystack_paths:
        haystack = token_stream(tokenizer, read_documents(haystack_paths, text_field), 2 * max(lengths))
    haystack = text if haystack is None else haystack
    bos = tokenizer.bos_token_id if prepends_bos(tokenizer) else None
    windows = {n: make_windows(text, n, windows_per_length[n], bos) for n in lengths}

    retrieval_sets = {}
    if settings.retrieval:
        retrieval_sets = prepare_tasks(
            tokenizer,
            haystack,
            settings.retrieval_tasks,
            lengths,
            settings.depths,
            samples=settings.retrieval_samples,
            needles=settings.needles,
            template=settings.retrieval_template,
            seed=settings.seed,
        )

    results: dict[str, Any] = {
        "model": model_name,
        "model_type": model.config.model_type,
        "training_length": L,
        "lengths": lengths,
        "variants": settings.variants,
        "settings": asdict(settings),
        "rope_parameters": {},
        "perplexity": {},
        "retrieval": {task: {} for task in retrieval_sets},
        "diagnostics": {},
    }
    jobs = [(v, n) for v in settings.variants for n in lengths]
    bar = tqdm(jobs, desc="eval", disable=not progress)
    built_key, variant_model = None, None
    for variant, n in bar:
        bar.set_postfix_str(f"{variant} @ {n}")
        rope = variant_rope_parameters(model.config, variant, n, length=L, dynamic_factor=settings.dynamic_factor)
        key = (variant, json.dumps(rope, sort_keys=True, default=str))
        if key != built_key:  # length-independent variants are built once
            variant_model = build_variant(model, variant, n, length=L, dynamic_factor=settings.dynamic_factor)
            built_key = key
        results["rope_parameters"].setdefault(variant, {})[str(n)] = rope
        results["perplexity"].setdefault(variant, {})[str(n)] = perplexity_at_length(
            variant_model,
            windows[n],
            batch_size=settings.batch_size,
            token_budget=settings.token_budget,
            position_buckets=settings.position_buckets,
            progress=progress,
            description=f"{variant} ppl @ {n}",
        )
        for task, samples in retrieval_sets.items():
            results["retrieval"][task].setdefault(variant, {})[str(n)] = score_task(
                variant_model,
                samples.get(n, []),
                settings.depths,
                batch_size=settings.batch_size,
                token_budget=settings.token_budget,
                progress=progress,
                description=f"{variant} {task} @ {n}",
            )
        if settings.diagnostics:
            results["diagnostics"].setdefault(variant, {})[str(n)] = diagnose(
                variant_model,
                windows[n][:1],
                layers=settings.diagnostic_layers,
                heads=settings.diagnostic_heads,
                max_queries=settings.diagnostic_queries,
                position_buckets=settings.position_buckets,
                training_length=L,
            )
    return results


def load_model_and_tokenizer(model: str, device: str = "auto", dtype: str = "auto"):
    """Loads a causal LM (remote code allowed) and its tokenizer, in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    elif dtype in DTYPES:
        torch_dtype = DTYPES[dtype]
    else:
        raise EvaluationError(f"Unknown dtype {dtype!r}; accepted: auto, {', '.join(DTYPES)}.")
    path = Path(model).expanduser()
    looks_like_path = str(model).startswith((".", "/", "~")) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", str(model))
    if not path.exists() and looks_like_path:
        raise EvaluationError(f"The model folder {model} does not exist (and it is not a Hub id like 'org/name').")
    if path.exists() and not path.is_dir():
        raise EvaluationError(f"{model} is a file; give a model folder (config.json + weights) or a Hub id.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=True)
        loaded = AutoModelForCausalLM.from_pretrained(model, trust_remote_code=True, dtype=torch_dtype)
    except OSError as error:
        raise EvaluationError(f"Cannot load model {model!r}: {error}") from None
    return loaded.to(device).eval(), tokenizer
