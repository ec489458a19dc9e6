"""Small facts the tools share: the dtype names they accept, progress lines; ``head_dim_of`` is the math
layer's (``rope_id.py``), re-exported for the tools."""

from __future__ import annotations

import hashlib
import os
import sys

import torch

from .rope_id import head_dim_of  # noqa: F401  (re-exported: the one implementation)

# The dtype names every command accepts (``--dtype``); "auto" is resolved by each command.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# safetensors header dtype -> name
SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def say(message: str) -> None:
    """A progress line on stderr (stdout is kept for results)."""
    print(f"[hf-ropeid] {message}", file=sys.stderr, flush=True)


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()
