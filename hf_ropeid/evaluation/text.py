"""Evaluation text: local documents -> one token stream -> windows of exactly ``n`` tokens.

Files are read by the package's one document loader (``hf_ropeid.documents``); with no text given,
the evaluation reads CPython's standard-library source, present on every machine.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch

from ..documents import document_files
from ..documents import read_documents as _read_documents
from .errors import EvaluationError

# Left out of folders given as evaluation text: tests and vendored packages are not natural text.
SKIPPED_DIRECTORIES = {"site-packages", "dist-packages", "test", "tests", "__pycache__", "idlelib", "turtledemo"}


def default_text_paths() -> list[Path]:
    """CPython's standard library source: present on every machine, real long-range structure."""
    return [Path(sysconfig.get_paths()["stdlib"])]


def text_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files to read, in a fixed order: given files as they are, folders searched recursively."""
    return document_files(paths, SKIPPED_DIRECTORIES)


def read_documents(paths: Sequence[str | Path], text_field: str = "text") -> Iterator[str]:
    """Yields documents from local files (see ``hf_ropeid.documents``), test folders left out."""
    return _read_documents(paths, text_field, SKIPPED_DIRECTORIES)


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
