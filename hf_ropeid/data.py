"""Training text: local files or a ``datasets`` name -> documents -> packed token blocks.

Documents are whole files (text / markdown / code) or rows (jsonl / json / parquet / a dataset),
shuffled with a seed, optionally split into train and held-out *by document* (no block straddles
the split), tokenised, and packed into blocks of exactly ``seq_length`` tokens with the EOS token
between documents. Held-out documents are instead cut into windows inside each document, so that
perplexity at a length ``n`` measures ``n`` tokens of one coherent text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .documents import DataError, is_glob, read_documents
from .errors import require

logger = logging.getLogger(__name__)

__all__ = [
    "DataError",
    "DataSource",
    "build_training_blocks",
    "load_documents",
    "load_held_out",
    "pack_tokens",
    "split_documents",
    "tokenize_documents",
    "window_tokens",
]


@dataclass(frozen=True)
class DataSource:
    """Where documents come from: local paths (files, folders, globs; see ``hf_ropeid.documents``) or one ``datasets`` name."""

    paths: tuple[str, ...]
    text_field: str = "text"
    dataset_config: str | None = None
    dataset_split: str = "train"


def _is_dataset_name(paths: tuple[str, ...]) -> bool:
    """One name that is no local path, no glob and has no file suffix: a ``datasets`` name like ``org/name``."""
    if len(paths) != 1:
        return False
    raw = paths[0]
    looks_like_path = raw.startswith(("/", ".", "~")) or Path(raw).suffix != "" or raw.count("/") > 1
    return not Path(raw).expanduser().exists() and not looks_like_path and not is_glob(raw)


def load_documents(source: DataSource):
    """A ``datasets.Dataset`` with one column ``text``, one row per non-empty document."""
    require("datasets", "train", "Loading training data")
    import datasets

    if not source.paths:
        raise DataError("No data given: pass at least one file, folder, glob or datasets name.")
    if _is_dataset_name(source.paths):
        name = source.paths[0]
        try:
            dataset = datasets.load_dataset(name, source.dataset_config, split=source.dataset_split)
        except Exception as err:  # datasets raises many types; the user needs the name and the cause
            raise DataError(
                f"Could not load dataset {name!r} (config {source.dataset_config!r}, split "
                f"{source.dataset_split!r}): {err}. Local files must exist; Hub datasets must be cached when offline."
            ) from err
        if source.text_field not in dataset.column_names:
            raise DataError(
                f"The data has no column {source.text_field!r} (columns: {dataset.column_names}); "
                "choose one with --text-field."
            )
        dataset = dataset.select_columns([source.text_field])
        documents = dataset.rename_column(source.text_field, "text") if source.text_field != "text" else dataset
        documents = documents.filter(lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True)
    else:
        documents = datasets.Dataset.from_dict({"text": list(read_documents(source.paths, source.text_field))})
    if len(documents) == 0:
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

    return documents.map(
        tokenize, batched=True, remove_columns=documents.column_names, num_proc=num_proc, desc="Tokenising"
    )


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


def build_training_blocks(
    source: DataSource,
    tokenizer,
    seq_length: int,
    *,
    seed: int,
    eval_fraction: float = 0.0,
    num_proc: int | None = None,
):
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
