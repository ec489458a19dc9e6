"""Length-generalisation evaluation: perplexity vs context length, retrieval, diagnostics, report.

``run_evaluation(model, tokenizer, settings)`` evaluates every requested positional-encoding
variant (see ``hf_ropeid.baselines``) at every length on the same weights and returns one
JSON-ready dict; ``write_report(results, out_dir)`` writes ``results.json``, ``results.md`` and PNG
plots; ``results_markdown(results)`` returns the markdown tables (the model card embeds them).
``eval_command`` is the ``hf-ropeid eval`` command.

Perplexity uses non-overlapping windows of exactly ``n`` tokens cut from one token stream (the
same text at every length and for every variant). The language-model head runs on chunks of
positions, so a long window never materialises ``n x vocab`` logits at once.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sysconfig
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from .baselines import (
    VARIANTS,
    BaselineError,
    available_variants,
    build_variant,
    training_length,
    variant_rope_parameters,
)

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".jsonl")
SKIPPED_DIRECTORIES = {"site-packages", "dist-packages", "test", "tests", "__pycache__", "idlelib", "turtledemo"}
RESULTS_JSON = "results.json"
RESULTS_MARKDOWN = "results.md"


class EvaluationError(ValueError):
    """Bad evaluation input; the message says what was wrong and what is accepted."""


# ----------------------------------------------------------------------------------------------
# Text


def default_text_paths() -> list[Path]:
    """CPython's standard library source: present on every machine, real long-range structure."""
    return [Path(sysconfig.get_paths()["stdlib"])]


def text_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files to read, in a fixed order: given files as they are, folders searched recursively."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.suffix in TEXT_SUFFIXES
                and p.is_file()
                and not SKIPPED_DIRECTORIES.intersection(p.relative_to(path).parts[:-1])
            )
            if not found:
                raise EvaluationError(f"No {'/'.join(TEXT_SUFFIXES)} files under {path}.")
            files.extend(found)
        elif path.is_file():
            if path.suffix not in TEXT_SUFFIXES:
                raise EvaluationError(f"Cannot read {path}: accepted text files end in {', '.join(TEXT_SUFFIXES)}.")
            files.append(path)
        else:
            raise EvaluationError(f"Text path {path} does not exist (give a file or a folder of text files).")
    return files


def read_documents(paths: Sequence[str | Path], text_field: str = "text") -> Iterator[str]:
    """Yields documents from local files: a whole txt/md/rst/py file, or one jsonl record's ``text_field``."""
    for path in text_files(paths):
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8", errors="replace") as handle:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise EvaluationError(f"{path}:{number} is not valid JSON ({error.msg}).") from None
                    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                        raise EvaluationError(f"{path}:{number} has no string field {text_field!r} (set --text-field).")
                    yield record[text_field]
        else:
            text = path.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                yield text


def token_stream(tokenizer, documents: Iterable[str], needed_tokens: int, separator: str = "\n\n") -> torch.Tensor:
    """Concatenated token ids (int64) of ``documents`` until at least ``needed_tokens`` (or the text runs out)."""
    pieces: list[list[int]] = []
    total = 0
    for document in documents:
        ids = tokenizer(document + separator, add_special_tokens=False, verbose=False)["input_ids"]
        pieces.append(ids)
        total += len(ids)
        if total >= needed_tokens:
            break
    return torch.tensor([i for piece in pieces for i in piece], dtype=torch.long)


def prepends_bos(tokenizer) -> bool:
    """Whether the tokenizer starts every encoded text with BOS (then every window must start with it)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def make_windows(stream: torch.Tensor, length: int, count: int, bos_token_id: int | None = None) -> torch.Tensor:
    """``count`` non-overlapping windows of exactly ``length`` tokens, ``[count, length]``.

    With ``bos_token_id`` each window is BOS followed by ``length - 1`` text tokens.
    """
    body = length - (bos_token_id is not None)
    available = stream.numel() // body
    if available < 1:
        raise EvaluationError(
            f"The evaluation text has {stream.numel()} tokens, fewer than one window of {length}; "
            "give more text (--text) or shorter --lengths."
        )
    count = min(count, available)
    windows = stream[: count * body].view(count, body)
    if bos_token_id is not None:
        windows = torch.cat([torch.full((count, 1), bos_token_id, dtype=torch.long), windows], dim=1)
    return windows


# ----------------------------------------------------------------------------------------------
# Model passes


def batch_size_for(length: int, batch_size: int, token_budget: int) -> int:
    """Windows per forward pass: at most ``batch_size`` and at most ``token_budget`` tokens (at least 1)."""
    return max(1, min(batch_size, token_budget // length))


def final_hidden_states(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The decoder's last hidden states ``[batch, n, hidden]``, without computing any logits."""
    return model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state


def logits_from_hidden(model, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on some hidden states, in float32 (with the model's logit soft-cap, if it has one)."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


@torch.inference_mode()
def token_losses(model, input_ids: torch.Tensor, logits_chunk: int = 2048) -> torch.Tensor:
    """Cross-entropy of every next-token prediction, ``[batch, n - 1]`` float32 (nats).

    Entry ``i`` is the loss of predicting token ``i + 1`` from tokens ``0..i``.
    """
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    hidden = final_hidden_states(model, input_ids)
    targets = input_ids[:, 1:]
    losses = torch.empty(targets.shape, dtype=torch.float32, device=device)
    for start in range(0, targets.shape[1], logits_chunk):
        end = min(start + logits_chunk, targets.shape[1])
        logits = logits_from_hidden(model, hidden[:, start:end])
        losses[:, start:end] = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), targets[:, start:end], reduction="none"
        )
    return losses.cpu()


def bucket_means(values: torch.Tensor, positions: torch.Tensor, length: int, buckets: int) -> dict[str, list]:
    """Means of ``values`` (``[..., len(positions)]``) over equal-width buckets of positions in ``[0, length)``.

    Bucket ``i`` holds positions ``p`` with ``i * length / buckets <= p < (i + 1) * length / buckets``;
    an empty bucket's mean is None.
    """
    buckets = max(1, min(buckets, length))
    per_position = values.double().reshape(-1, positions.numel()).mean(0)
    index = (positions.long() * buckets) // length
    sums = torch.zeros(buckets, dtype=torch.float64).index_add_(0, index, per_position)
    counts = torch.bincount(index, minlength=buckets)
    starts = [math.ceil(i * length / buckets) for i in range(buckets + 1)]
    return {
        "bucket_start": starts[:-1],
        "bucket_end": starts[1:],
        "mean": [float(sums[i] / counts[i]) if counts[i] else None for i in range(buckets)],
    }


def _exp(loss: float) -> float | None:
    return math.exp(loss) if loss < 700 else None  # None: overflow (and JSON has no infinity)


def perplexity_at_length(
    model,
    windows: torch.Tensor,
    *,
    batch_size: int = 8,
    token_budget: int = 32768,
    position_buckets: int = 32,
    progress: bool = False,
    description: str = "",
) -> dict[str, Any]:
    """Mean loss, perplexity, tail loss (last quarter of each window) and a per-position loss curve."""
    from tqdm.auto import tqdm

    count, length = windows.shape
    per_batch = batch_size_for(length, batch_size, token_budget)
    losses = []
    for start in tqdm(range(0, count, per_batch), desc=description, leave=False, disable=not progress):
        losses.append(token_losses(model, windows[start : start + per_batch]))
    loss = torch.cat(losses).double()  # [count, length - 1]
    predicted_positions = torch.arange(1, length)  # position of the token each loss predicts
    tail = predicted_positions >= length - length // 4
    mean, tail_mean = float(loss.mean()), float(loss[:, tail].mean())
    return {
        "windows": count,
        "tokens": int(loss.numel()),
        "loss": mean,
        "perplexity": _exp(mean),
        "tail_loss": tail_mean,
        "tail_perplexity": _exp(tail_mean),
        "position_loss": bucket_means(loss, predicted_positions, length, position_buckets),
    }


# ----------------------------------------------------------------------------------------------
# The whole evaluation


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
    allowed = available_variants(config)
    variants = list(dict.fromkeys(settings.variants or allowed))
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
    for name, value in (("batch_size", settings.batch_size), ("token_budget", settings.token_budget),
                        ("tokens_per_length", settings.tokens_per_length)):
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

    from . import diagnostics, retrieval

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
        retrieval_sets = retrieval.prepare_tasks(
            tokenizer, haystack, settings.retrieval_tasks, lengths, settings.depths,
            samples=settings.retrieval_samples, needles=settings.needles, seed=settings.seed,
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
            variant_model, windows[n], batch_size=settings.batch_size, token_budget=settings.token_budget,
            position_buckets=settings.position_buckets, progress=progress, description=f"{variant} ppl @ {n}",
        )
        for task, samples in retrieval_sets.items():
            results["retrieval"][task].setdefault(variant, {})[str(n)] = retrieval.score_task(
                variant_model, samples.get(n, []), settings.depths,
                batch_size=settings.batch_size, token_budget=settings.token_budget,
            )
        if settings.diagnostics:
            results["diagnostics"].setdefault(variant, {})[str(n)] = diagnostics.diagnose(
                variant_model, windows[n][:1], layers=settings.diagnostic_layers, heads=settings.diagnostic_heads,
                max_queries=settings.diagnostic_queries, position_buckets=settings.position_buckets,
                training_length=L,
            )
    return results


# ----------------------------------------------------------------------------------------------
# Report


def _length_label(n: int, L: int) -> str:
    ratio = n / L
    if ratio == 1:
        return f"{n} (L)"
    if ratio < 1 and (L / n).is_integer():
        return f"{n} (L/{L // n})"
    return f"{n} ({ratio:.3g}L)"


def _table(title: str, rows: dict[str, list[str]], header: list[str]) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([name, *cells]) + " |" for name, cells in rows.items()]
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.3g}"


def results_markdown(results: dict[str, Any]) -> str:
    """Markdown tables (variants x lengths) of perplexity, tail perplexity and retrieval accuracy."""
    L, lengths, variants = results["training_length"], results["lengths"], results["variants"]
    header = ["variant", *(_length_label(n, L) for n in lengths)]
    ppl = results.get("perplexity", {})
    tables = [
        _table(
            f"Perplexity vs context length (training length L = {L})",
            {v: [_fmt(ppl.get(v, {}).get(str(n), {}).get("perplexity")) for n in lengths] for v in variants},
            header,
        ),
        _table(
            "Tail perplexity (last quarter of each window)",
            {v: [_fmt(ppl.get(v, {}).get(str(n), {}).get("tail_perplexity")) for n in lengths] for v in variants},
            header,
        ),
    ]
    for task, by_variant in results.get("retrieval", {}).items():
        rows = {}
        for v in variants:
            cells = []
            for n in lengths:
                accuracy = by_variant.get(v, {}).get(str(n), {}).get("accuracy")
                cells.append("–" if accuracy is None else f"{100 * accuracy:.0f}%")
            rows[v] = cells
        tables.append(_table(f"Retrieval accuracy, {task} (exact match, all depths)", rows, header))
    return "\n\n".join(tables) + "\n"


def load_results(path: str | Path) -> dict[str, Any]:
    """Reads ``results.json`` from an output folder (or the file itself)."""
    path = Path(path)
    return json.loads((path / RESULTS_JSON if path.is_dir() else path).read_text())


def write_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    from . import diagnostics, plots, retrieval

    L, lengths, variants = results["training_length"], results["lengths"], results["variants"]
    colors = plots.color_map(variants)
    written = []
    ppl = results["perplexity"]
    for key, label, name in (("perplexity", "perplexity", "perplexity_vs_length.png"),
                             ("tail_perplexity", "tail perplexity (last quarter)", "tail_perplexity_vs_length.png")):
        series = {v: (lengths, [ppl[v][str(n)][key] for n in lengths]) for v in variants if v in ppl}
        written.append(plots.line_plot(
            out_dir / name, series, xlabel="context length (tokens)", ylabel=label, log_x=True, log_y=True,
            vline=L, vline_label=f"L = {L}", colors=colors, title=f"{label} vs context length",
        ))
    panels = {
        v: {str(n): _bucket_curve(ppl[v][str(n)]["position_loss"]) for n in lengths} for v in variants if v in ppl
    }
    written.append(plots.lines_grid(
        out_dir / "position_loss.png", panels, xlabel="position in window", ylabel="mean loss (nats)",
        vline=L, legend_title="window length", markers=False, suptitle="Loss per position bucket",
    ))
    written += retrieval.plot_results(results, out_dir)
    written += diagnostics.plot_results(results, out_dir)
    return written


def _bucket_curve(buckets: dict[str, list]) -> tuple[list[float], list[float | None]]:
    centers = [(a + b) / 2 for a, b in zip(buckets["bucket_start"], buckets["bucket_end"])]
    return centers, buckets["mean"]


def _json_safe(value: Any) -> Any:
    """Non-finite floats become None (strict JSON); containers are converted recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_report(results: dict[str, Any], out_dir: str | Path, force: bool = False) -> Path:
    """Writes results.json, results.md and PNGs into ``out_dir`` atomically (temp folder, then rename)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise EvaluationError(f"{out_dir} already exists; choose another --out or pass --force to replace it.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (staging / RESULTS_JSON).write_text(json.dumps(_json_safe(results), indent=1, allow_nan=False) + "\n")
        (staging / RESULTS_MARKDOWN).write_text(results_markdown(results))
        write_plots(results, staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


# ----------------------------------------------------------------------------------------------
# lm-evaluation-harness tasks that need no download

LM_EVAL_PERPLEXITY_TASK = "ropeid_local_ppl"
LM_EVAL_PASSKEY_TASK = "ropeid_local_passkey"
_LM_EVAL_DATASET = """dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
"""  # {data} is a JSON-quoted absolute path (valid YAML whatever characters it holds)


def write_lm_eval_tasks(
    folder: str | Path,
    text_paths: Sequence[str | Path] | None = None,
    *,
    documents: int = 16,
    document_chars: int = 8000,
    passkey_chars: int = 4000,
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    seed: int = 0,
) -> list[Path]:
    """Writes two lm-eval tasks over local jsonl files (``lm_eval --include_path FOLDER``).

    - ``ropeid_local_ppl`` (loglikelihood_rolling): word/byte perplexity and bits per byte of
      ``documents`` local documents (default: Python's stdlib source), each cut to ``document_chars``.
    - ``ropeid_local_passkey`` (generate_until, exact match): one passkey prompt per depth with a
      haystack of about ``passkey_chars`` characters.

    The YAML files name the jsonl files by absolute path; ``datasets``' json loader reads them
    offline.
    """
    import random

    from . import retrieval

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    texts = list(islice((t[:document_chars] for t in read_documents(text_paths or default_text_paths())), documents))
    if not texts:
        raise EvaluationError("No text to build lm-eval tasks from.")
    haystack = "\n".join(texts)
    while len(haystack) < passkey_chars:
        haystack += "\n" + haystack
    rng = random.Random(seed)
    passkeys = []
    for depth in depths:
        value = str(rng.randrange(10_000, 100_000))
        start = rng.randrange(0, len(haystack) - passkey_chars + 1)
        hay = haystack[start : start + passkey_chars]
        at = hay.rfind("\n", 0, int(depth * len(hay)) + 1) + 1  # a line boundary at or before the depth
        prompt = (
            retrieval.PASSKEY_INSTRUCTION + hay[:at] + retrieval.PASSKEY_NEEDLE.format(value=value)
            + hay[at:] + retrieval.PASSKEY_QUESTION
        )
        passkeys.append({"prompt": prompt, "answer": value, "depth": depth})
    written = []
    for name, records in (("documents.jsonl", [{"text": t} for t in texts]), ("passkey.jsonl", passkeys)):
        path = folder / name
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        written.append(path)
    (folder / f"{LM_EVAL_PERPLEXITY_TASK}.yaml").write_text(
        f"task: {LM_EVAL_PERPLEXITY_TASK}\n"
        + _LM_EVAL_DATASET.format(data=json.dumps(str(folder / "documents.jsonl")))
        + 'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
        "metadata:\n  version: 1.0\n"
    )
    (folder / f"{LM_EVAL_PASSKEY_TASK}.yaml").write_text(
        f"task: {LM_EVAL_PASSKEY_TASK}\n"
        + _LM_EVAL_DATASET.format(data=json.dumps(str(folder / "passkey.jsonl")))
        + 'output_type: generate_until\ndoc_to_text: "{{prompt}}"\ndoc_to_target: "{{answer}}"\n'
        'generation_kwargs:\n  until: ["."]\n  max_gen_toks: 8\n  do_sample: false\n'
        # The model answers " 60494": whitespace and the closing period are not part of the answer.
        'metric_list:\n  - metric: exact_match\n    regexes_to_ignore: ["\\\\s"]\n    ignore_punctuation: true\n'
        "metadata:\n  version: 1.0\n"
    )
    return [*written, folder / f"{LM_EVAL_PERPLEXITY_TASK}.yaml", folder / f"{LM_EVAL_PASSKEY_TASK}.yaml"]


# ----------------------------------------------------------------------------------------------
# Command line


def parse_int_list(value: str | None, what: str) -> list[int]:
    """A CLI option like ``256,512,1024`` as ints (empty for no value); BadParameter otherwise."""
    if not value:
        return []
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated whole numbers, e.g. 256,512,1024; got {value!r}.")


def _float_list(value: str, what: str) -> list[float]:
    try:
        return [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated numbers, e.g. 0,0.5,1; got {value!r}.")


def _name_list(value: str | None, accepted: Sequence[str], what: str) -> list[str]:
    names = [part.strip() for part in (value or "").split(",") if part.strip()]
    unknown = [n for n in names if n not in accepted]
    if unknown:
        raise typer.BadParameter(f"Unknown {what} {unknown}; accepted: {', '.join(accepted)}.")
    return names


def eval_command(
    model: Annotated[str, typer.Argument(help="Model folder or Hub id (loaded with trust_remote_code=True).")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default: eval-<model name>).")] = None,
    lengths: Annotated[str | None, typer.Option(help="Comma-separated context lengths (default: L/2 ... 16L).")] = None,
    baselines: Annotated[
        str | None,
        typer.Option(help=f"Comma-separated variants (default: all the model allows): {', '.join(VARIANTS)}."),
    ] = None,
    text: Annotated[
        list[Path] | None,
        typer.Option(
            help="Evaluation text: txt/md/rst/py/jsonl file or folder; repeatable (default: Python's stdlib source)."
        ),
    ] = None,
    text_field: Annotated[str, typer.Option(help="Field of jsonl records holding the text.")] = "text",
    haystack: Annotated[
        list[Path] | None, typer.Option(help="Haystack text for retrieval (default: the evaluation text).")
    ] = None,
    training_length: Annotated[int | None, typer.Option(help="Override L, the training length.")] = None,
    tokens_per_length: Annotated[int, typer.Option(help="Tokens evaluated per length (whole windows).")] = 16384,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass, at most.")] = 8,
    token_budget: Annotated[int, typer.Option(help="Tokens per forward pass, at most (batch x length).")] = 32768,
    position_buckets: Annotated[int, typer.Option(help="Buckets of the per-position curves.")] = 32,
    dynamic_factor: Annotated[float, typer.Option(help="`factor` of the dynamic NTK baseline.")] = 2.0,
    retrieval: Annotated[
        bool, typer.Option("--retrieval/--no-retrieval", help="Passkey and multi-key needles.")
    ] = True,
    tasks: Annotated[str, typer.Option(help="Retrieval tasks: passkey, multikey.")] = "passkey,multikey",
    depths: Annotated[str, typer.Option(help="Needle depths, fractions of the haystack.")] = "0,0.25,0.5,0.75,1",
    samples: Annotated[int, typer.Option(help="Retrieval samples per length and depth.")] = 4,
    needles: Annotated[int, typer.Option(help="Needles in multikey (one asked, the rest distractors).")] = 4,
    diagnostics: Annotated[
        bool, typer.Option("--diagnostics/--no-diagnostics", help="Sink mass/margin and key/query cluster separation.")
    ] = True,
    layers: Annotated[str | None, typer.Option(help="Diagnostic layers (default: first, middle, last).")] = None,
    heads: Annotated[str | None, typer.Option(help="Diagnostic query heads (default: all).")] = None,
    diagnostic_queries: Annotated[int, typer.Option(help="Query positions sampled per diagnostic window.")] = 256,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, mps ...")] = "auto",
    dtype: Annotated[
        str, typer.Option(help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16.")
    ] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the retrieval samples.")] = 0,
    force: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Length generalisation of a model and its positional baselines: perplexity, retrieval, diagnostics."""
    from . import retrieval as retrieval_module
    from .retrieval import RetrievalError

    out = out or Path(f"eval-{Path(model.rstrip('/')).name}")
    if out.exists() and not force:
        raise typer.BadParameter(f"{out} already exists; choose another --out or pass --force.", param_hint="--out")
    settings = EvalSettings(
        lengths=parse_int_list(lengths, "--lengths"),
        variants=_name_list(baselines, VARIANTS, "baselines"),
        training_length=training_length,
        tokens_per_length=tokens_per_length,
        batch_size=batch_size,
        token_budget=token_budget,
        position_buckets=position_buckets,
        dynamic_factor=dynamic_factor,
        retrieval=retrieval,
        retrieval_tasks=_name_list(tasks, retrieval_module.TASKS, "retrieval tasks"),
        depths=_float_list(depths, "--depths"),
        retrieval_samples=samples,
        needles=needles,
        diagnostics=diagnostics,
        diagnostic_layers=parse_int_list(layers, "--layers") or None,
        diagnostic_heads=parse_int_list(heads, "--heads") or None,
        diagnostic_queries=diagnostic_queries,
        seed=seed,
    )
    loaded, tokenizer = load_model_and_tokenizer(model, device=device, dtype=dtype)
    try:
        results = run_evaluation(
            loaded, tokenizer, settings, text_paths=text or None, haystack_paths=haystack or None,
            text_field=text_field, model_name=model,
        )
    except (EvaluationError, BaselineError, RetrievalError) as error:
        raise typer.BadParameter(str(error)) from None
    write_report(results, out, force=force)
    typer.echo(results_markdown(results))
    typer.echo(f"Wrote {out}/{RESULTS_JSON}, {RESULTS_MARKDOWN} and plots.")


def load_model_and_tokenizer(model: str, device: str = "auto", dtype: str = "auto"):
    """Loads a causal LM (remote code allowed) and its tokenizer, in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_ropeid  # noqa: F401  (registers rope_id and the RoPE-ID classes)

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    elif dtype in dtypes:
        torch_dtype = dtypes[dtype]
    else:
        raise typer.BadParameter(f"Unknown dtype {dtype!r}; accepted: auto, {', '.join(dtypes)}.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=True)
        loaded = AutoModelForCausalLM.from_pretrained(model, trust_remote_code=True, dtype=torch_dtype)
    except OSError as error:
        raise typer.BadParameter(f"Cannot load model {model!r}: {error}", param_hint="MODEL") from None
    return loaded.to(device).eval(), tokenizer


__all__ = [
    "EvalSettings",
    "EvaluationError",
    "eval_command",
    "load_results",
    "make_windows",
    "perplexity_at_length",
    "read_documents",
    "results_markdown",
    "run_evaluation",
    "token_losses",
    "token_stream",
    "write_lm_eval_tasks",
    "write_report",
]
