"""Small facts the tools share: a config's head dimension, the dtype names they accept, progress lines.

``head_dim_of`` stands in for the model layer's helper until that one lands in ``rope_id.py``.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

# The dtype names every command accepts (``--dtype``); "auto" is resolved by each command.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# safetensors header dtype -> name
SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def head_dim_of(config: Any) -> int:
    """``config.head_dim`` when set, else ``hidden_size // num_attention_heads`` (a config object or a dict)."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    return get("head_dim", None) or get("hidden_size", 0) // max(get("num_attention_heads", 1) or 1, 1)


def say(message: str) -> None:
    """A progress line on stderr (stdout is kept for results)."""
    print(f"[hf-ropeid] {message}", file=sys.stderr, flush=True)
