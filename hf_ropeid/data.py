"""Training text: local files or a ``datasets`` name -> documents -> packed token blocks.

Documents are whole files (text / markdown / code) or rows (jsonl / json / parquet / a dataset),
shuffled with a seed, optionally split into train and held-out *by document* (no block straddles
the split), tokenised, and packed into blocks of exactly ``seq_length`` tokens with the EOS token
between documents. Held-out documents are instead cut into windows inside each document, so that
perplexity at a length ``n`` measures ``n`` tokens of one coherent text.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

TABULAR_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
DEFAULT_DIRECTORY_PATTERNS = ("*.txt", "*.md", "*.markdown", "*.rst", "*.jsonl", "*.json", "*.parquet")


class DataError(ValueError):
    """The training or evaluation data cannot be used; the message says what was wrong."""


@dataclass(frozen=True)
class DataSource:
    """Where documents come from: local paths (files, folders, globs) or one ``datasets`` name."""

    paths: tuple[str, ...]
    text_field: str = "text"
    dataset_config: str | None = None
    dataset_split: str = "train"
    directory_patterns: tuple[str, ...] = DEFAULT_DIRECTORY_PATTERNS


def _looks_like_path(raw: str) -> bool:
    return raw.startswith(("/", ".", "~")) or Path(raw).suffix != "" or raw.count("/") > 1


def _expand_local(paths: Sequence[str], patterns: Sequence[str]) -> list[Path] | None:
    """Local files named by ``paths`` (folders searched recursively, globs expanded).

    Returns None when ``paths`` is a single name that is no local path: a ``datasets`` name.
    """
    if len(paths) == 1 and not Path(paths[0]).expanduser().exists() and not _looks_like_path(paths[0]) \
            and not any(ch in paths[0] for ch in "*?["):
        return None
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted({f for pattern in patterns for f in path.rglob(pattern) if f.is_file()})
            if not found:
                raise DataError(f"The folder {path} holds no files matching {', '.join(patterns)}.")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif any(ch in raw for ch in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(os.path.expanduser(raw), recursive=True)) if Path(m).is_file()]
            if not matches:
                raise DataError(f"The pattern {raw!r} matches no file.")
            files.extend(matches)
        else:
            raise DataError(f"Data file or folder {raw!r} does not exist.")
    return files


def load_documents(source: DataSource):
    """A ``datasets.Dataset`` with one column ``text``, one row per non-empty document."""
    import datasets

    if not source.paths:
        raise DataError("No data given: pass at least one file, folder, glob or datasets name.")
    files = _expand_local(source.paths, source.directory_patterns)
    parts = []  # (dataset, name of its text column)
    if files is None:
        if len(source.paths) != 1:
            raise DataError(f"Give one datasets name at a time, got {list(source.paths)}.")
        try:
            dataset = datasets.load_dataset(source.paths[0], source.dataset_config, split=source.dataset_split)
        except Exception as err:  # datasets raises many types; the user needs the name and the cause
            raise DataError(
                f"Could not load dataset {source.paths[0]!r} (config {source.dataset_config!r}, split "
                f"{source.dataset_split!r}): {err}. Local files must exist; Hub datasets must be cached when offline."
            ) from err
        parts.append((dataset, source.text_field))
    else:
        by_builder: dict[str, list[str]] = {}
        for f in files:
            if f.stat().st_size == 0:
                logger.warning("Skipping empty file %s", f)
                continue
            by_builder.setdefault(TABULAR_SUFFIXES.get(f.suffix.lower(), "text"), []).append(str(f))
        for builder, names in sorted(by_builder.items()):
            if builder == "text":  # one document per file
                parts.append((datasets.load_dataset("text", data_files=names, split="train", sample_by="document"), "text"))
            else:
                parts.append((datasets.load_dataset(builder, data_files=names, split="train"), source.text_field))
    normalised = []
    for part, field in parts:
        if field not in part.column_names:
            raise DataError(
                f"The data has no column {field!r} (columns: {part.column_names}); choose one with --text-field."
            )
        part = part.select_columns([field])
        normalised.append(part.rename_column(field, "text") if field != "text" else part)
    documents = datasets.concatenate_datasets(normalised) if normalised else None
    if documents is not None:
        documents = documents.filter(lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True)
    if documents is None or len(documents) == 0:
        raise DataError(f"The data in {list(source.paths)} holds no text (all files or rows are empty).")
    return documents


def split_documents(documents, eval_fraction: float, seed: int):
    """Shuffles documents with ``seed`` and returns ``(train, held_out)``; ``held_out`` is None at 0."""
    if not 0 <= eval_fraction < 1:
        raise DataError(f"eval_fraction must be in [0, 1), got {eval_fraction}.")
    documents = documents.shuffle(seed=seed)
    if eval_fraction == 0:
        return documents, None
    if len(documents) < 2:
        raise DataError(
            "A held-out split needs at least 2 documents (the split is by document); "
            f"got {len(documents)}. Pass separate evaluation data instead."
        )
    held_out = max(1, round(eval_fraction * len(documents)))
    return documents.select(range(held_out, len(documents))), documents.select(range(held_out))


def tokenize_documents(documents, tokenizer, num_proc: int | None = None):
    """Adds ``input_ids`` per document (with the tokenizer's own special tokens, e.g. a BOS)."""
    def tokenize(batch):
        return {"input_ids": tokenizer(batch["text"], add_special_tokens=True, verbose=False)["input_ids"]}

    return documents.map(tokenize, batched=True, remove_columns=documents.column_names, num_proc=num_proc,
                         desc="Tokenising")


def pack_tokens(tokenized, seq_length: int, eos_token_id: int):
    """Concatenates documents with EOS between them and cuts blocks of exactly ``seq_length`` tokens.

    Packs in one batch so that no tokens are dropped except the final partial block.
    """
    if seq_length < 2:
        raise DataError(f"seq_length must be at least 2 tokens, got {seq_length}.")
    total = sum(len(ids) + 1 for ids in tokenized["input_ids"])
    if total < seq_length:
        raise DataError(
            f"The training data holds {total} tokens (EOS included), fewer than one sequence of "
            f"seq_length={seq_length}. Add data or lower --seq-length."
        )

    def pack(batch):
        stream = [token for ids in batch["input_ids"] for token in (*ids, eos_token_id)]
        usable = len(stream) // seq_length * seq_length
        return {"input_ids": [stream[i : i + seq_length] for i in range(0, usable, seq_length)]}

    return tokenized.map(pack, batched=True, batch_size=None, remove_columns=tokenized.column_names, desc="Packing")


def window_tokens(tokenized, length: int, max_windows: int | None = None) -> list[list[int]]:
    """Non-overlapping windows of ``length`` tokens, each inside one document, in document order.

    Raises DataError if every document is shorter than ``length``.
    """
    windows: list[list[int]] = []
    longest = 0
    for ids in tokenized["input_ids"]:
        longest = max(longest, len(ids))
        for start in range(0, len(ids) - length + 1, length):
            windows.append(ids[start : start + length])
            if max_windows is not None and len(windows) >= max_windows:
                return windows
    if not windows:
        raise DataError(
            f"Every held-out document is shorter than the evaluation length {length} tokens (the longest has "
            f"{longest}). Use longer held-out documents or drop that evaluation length."
        )
    return windows


def build_training_blocks(source: DataSource, tokenizer, seq_length: int, *, seed: int, eval_fraction: float = 0.0,
                          num_proc: int | None = None):
    """``(train_blocks, held_out_tokenized_or_None)``: packed training blocks and held-out documents."""
    if tokenizer.eos_token_id is None:
        raise DataError("The tokenizer has no EOS token; packing needs one between documents.")
    train_docs, held_out_docs = split_documents(load_documents(source), eval_fraction, seed)
    train_blocks = pack_tokens(tokenize_documents(train_docs, tokenizer, num_proc), seq_length, tokenizer.eos_token_id)
    held_out = tokenize_documents(held_out_docs, tokenizer, num_proc) if held_out_docs is not None else None
    return train_blocks, held_out


def load_held_out(source: DataSource, tokenizer, num_proc: int | None = None):
    """Held-out documents from their own source, tokenised (not shuffled: windows follow the text)."""
    return tokenize_documents(load_documents(source), tokenizer, num_proc)
