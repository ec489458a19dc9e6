"""The one document loader: which local files hold text, and the documents in them.

Training data (``hf-ropeid finetune --data``), held-out text and evaluation text (``hf-ropeid eval
--text``) all go through here, so they accept the same files:

- text files, one document per file: ``.txt .md .markdown .rst .py``;
- record files, one document per record, field ``text_field``: ``.jsonl``, ``.json`` (a list of
  records, one record, or JSON lines) and ``.parquet``;
- folders (searched recursively, sorted) and globs (``corpus/**/*.md``).
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import HfRopeIDError, require

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".py")
RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")
DOCUMENT_SUFFIXES = TEXT_SUFFIXES + RECORD_SUFFIXES


class DataError(HfRopeIDError, ValueError):
    """The training or evaluation text cannot be used; the message says what was wrong."""


def is_glob(raw: str) -> bool:
    return any(ch in raw for ch in "*?[")


def document_files(paths: Iterable[str | os.PathLike], skip_directories: Iterable[str] = ()) -> list[Path]:
    """The files to read, in a fixed order: files as given, folders searched recursively, globs expanded.

    Inside folders, files under a directory named in ``skip_directories`` are left out.
    """
    skip = set(skip_directories)
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.suffix.lower() in DOCUMENT_SUFFIXES
                and p.is_file()
                and not skip.intersection(p.relative_to(path).parts[:-1])
            )
            if not found:
                raise DataError(f"The folder {path} holds no files matching {', '.join(DOCUMENT_SUFFIXES)}.")
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in DOCUMENT_SUFFIXES:
                raise DataError(f"Cannot read {path}: accepted text files end in {', '.join(DOCUMENT_SUFFIXES)}.")
            files.append(path)
        elif is_glob(str(raw)):
            matches = [Path(m) for m in sorted(glob.glob(os.path.expanduser(str(raw)), recursive=True))]
            matches = [m for m in matches if m.is_file() and m.suffix.lower() in DOCUMENT_SUFFIXES]
            if not matches:
                raise DataError(f"The pattern {str(raw)!r} matches no file ending in {', '.join(DOCUMENT_SUFFIXES)}.")
            files.extend(matches)
        else:
            raise DataError(f"Data file or folder {str(raw)!r} does not exist.")
    return files


def _record_text(record: Any, text_field: str, where: str) -> str:
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(
            f"{where} has no column {text_field!r} holding text (found {keys}); choose one with --text-field."
        )
    return record[text_field]


def _json_lines(path: Path, text_field: str) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number} is not valid JSON ({error.msg}).") from None
            yield _record_text(record, text_field, f"{path}:{number}")


def _records(path: Path, text_field: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        require("pyarrow", "train", "Reading .parquet files")
        import pyarrow.parquet as pq

        columns = pq.read_schema(path).names
        if text_field not in columns:
            raise DataError(f"{path} has no column {text_field!r} (columns: {columns}); choose one with --text-field.")
        yield from (
            t for t in pq.read_table(path, columns=[text_field]).column(text_field).to_pylist() if isinstance(t, str)
        )
        return
    if suffix == ".json":
        try:
            content = json.loads(path.read_text(encoding="utf-8", errors="replace"))
        except json.JSONDecodeError:
            content = None  # JSON lines in a .json file
        if content is not None:
            records = content if isinstance(content, list) else [content]
            for number, record in enumerate(records, start=1):
                yield _record_text(record, text_field, f"{path} record {number}")
            return
    yield from _json_lines(path, text_field)


def read_documents(
    paths: Sequence[str | os.PathLike], text_field: str = "text", skip_directories: Iterable[str] = ()
) -> Iterator[str]:
    """Yields every non-blank document of ``paths`` (see the module docstring), lazily, in file order."""
    for path in document_files(paths, skip_directories):
        if path.suffix.lower() in RECORD_SUFFIXES:
            yield from (text for text in _records(path, text_field) if text.strip())
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            yield text
        else:
            logger.warning("Skipping empty file %s", path)
