"""``hf-ropeid verify FOLDER``: is a checkpoint on disk intact? (No model is loaded; seconds, not minutes.)

Checks, each reported by file or tensor name:

- every file whose sha256 the converter recorded in ``conversion.json`` (weights, index, config)
  still has it: a flipped bit in transit or on disk is found even where the value stays finite;
- every safetensors file can be read, and every floating-point tensor is finite (no NaN / Inf);
- for a Llama or RoPE-ID checkpoint, every tensor the config needs is there with its shape, and
  nothing else.

A checkpoint without ``conversion.json`` (any downloaded Llama, say) gets the last two checks and
a note that no hashes were recorded. The fresh-process load-and-generate check of a conversion is
``verification.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .conversion import ConversionError, check_weights, read_weight_headers, weight_files
from .errors import HfRopeIDError
from .utils import sha256_file

SHAPE_CHECKED_TYPES = ("llama", "llama_rope_id")
# Defaults of LlamaConfig for keys a config.json may leave out
_LLAMA_DEFAULTS = {"attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False}


class IntegrityError(HfRopeIDError, ValueError):
    """The folder is not a checkpoint, or it is corrupted; the message names what is wrong."""


class _Config(dict):
    """A config.json as attributes (what ``conversion.expected_shapes`` reads)."""

    def __getattr__(self, key: str) -> Any:
        if key in self:
            return self[key]
        if key in _LLAMA_DEFAULTS:
            return _LLAMA_DEFAULTS[key]
        raise AttributeError(key)


def check_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """``{"folder", "problems", "notes", "files_hashed", "tensors_checked"}``; ``problems`` empty means intact.

    Raises IntegrityError only when ``folder`` is not a checkpoint folder at all.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise IntegrityError(f"{folder} does not exist or is not a folder.")
    if not (folder / "config.json").is_file():
        raise IntegrityError(f"{folder} has no config.json; expected a Hugging Face model folder.")
    problems: list[str] = []
    notes: list[str] = []
    report: dict[str, Any] = {"folder": str(folder), "problems": problems, "notes": notes}

    recorded: dict[str, str] = {}
    try:
        recorded = json.loads((folder / "conversion.json").read_text()).get("files") or {}
    except FileNotFoundError:
        notes.append("no conversion.json: no recorded sha256 to compare (only readability, finiteness, shapes)")
    except (OSError, ValueError, AttributeError) as error:
        problems.append(f"conversion.json cannot be read: {error}")
    if not recorded and (folder / "conversion.json").is_file() and not problems:
        notes.append("conversion.json records no sha256 (written by an older hf-ropeid)")
    for name, expected in sorted(recorded.items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing (conversion.json records its sha256)")
        elif sha256_file(path) != expected:
            problems.append(f"{name}: sha256 differs from the one recorded in conversion.json (corrupted or modified)")
    report["files_hashed"] = len(recorded)

    try:
        config = _Config(json.loads((folder / "config.json").read_text()))
    except ValueError as error:
        problems.append(f"config.json is not valid JSON: {error}")
        return report
    try:
        files = weight_files(folder)
    except ConversionError as error:
        problems.append(str(error))
        return report

    readable = []
    for file in files:
        try:
            read_weight_headers([file])
            readable.append(file)
        except ConversionError:
            problems.append(f"{file.name}: cannot be read as safetensors (truncated or corrupted)")
    report["tensors_checked"] = _check_finite(readable, problems)

    if config.get("model_type") in SHAPE_CHECKED_TYPES and len(readable) == len(files):
        try:
            check_weights(config, read_weight_headers(files))
        except (ConversionError, KeyError, AttributeError, TypeError) as error:
            problems.append(str(error) if isinstance(error, ConversionError) else f"config.json lacks {error}")
    elif config.get("model_type") not in SHAPE_CHECKED_TYPES:
        notes.append(f"shapes not checked against the config (model_type {config.get('model_type')!r})")
    return report


def _check_finite(files: list[Path], problems: list[str]) -> int:
    from safetensors import safe_open

    count = 0
    for file in files:
        try:
            with safe_open(file, "pt") as f:
                for name in f.keys():
                    tensor = f.get_tensor(name)
                    count += 1
                    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                        problems.append(f"{file.name}: tensor {name} contains NaN or infinite values")
        except Exception as error:  # a body shorter than its header says, ...
            problems.append(f"{file.name}: cannot be read ({type(error).__name__}: {error})")
    return count


def verify_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """``check_folder``, raising IntegrityError that lists every problem when there is one."""
    report = check_folder(folder)
    if report["problems"]:
        raise IntegrityError(f"{folder} is corrupted:\n- " + "\n- ".join(report["problems"]))
    return report
