"""Export a Llama or RoPE-ID checkpoint folder to a llama.cpp GGUF file.

What llama.cpp can express (read from its sources, the llama.cpp vendored by llama-cpp-python 0.3.36):

- Its ``llama`` architecture rotates interleaved channel pairs (``LLAMA_ROPE_TYPE_NORM``: channels 2i and
  2i+1), where Hugging Face pairs channel i with i + head_dim/2. The q/k rows of each head are permuted on
  export exactly as llama.cpp's ``convert_hf_to_gguf.py`` does (``LlamaModel.permute``), so that
  interleaved pair i holds HF channels (i, i + head_dim/2) and uses frequency index i.
- An optional F32 tensor ``rope_freqs.weight`` of shape [head_dim/2] divides each pair's angle:
  ``theta_i = p * base**(-2i/d) / ff_i`` (ggml's ``rope_yarn`` / ``ggml_rope_cache_init``). Writing
  ``ff_i = base**(-2i/d) / w_i`` gives pair i the angular frequency ``w_i`` of the RoPE-ID spectrum; a huge
  ``ff_i`` (1e30) gives angle ~0, i.e. an unrotated (NoPE) pair. No partial rotary: ``rope.dimension_count``
  is the whole head.
- A query temperature exists only in the ``llama4`` and ``mistral3`` architectures
  (``llm_graph_input_attn_temp``): queries at 0-based position ``i`` are multiplied by
  ``1 + beta * ln(1 + floor((i + offset) / floor_scale))``. ``mistral3`` is the llama layout (its converter
  subclasses the Llama one, same q/k permutation), reads ``rope_freqs``, takes ``beta`` from
  ``attention.temperature_scale`` and sets offset 0 and ``floor_scale = rope.scaling.original_context_length``.
  So the RoPE-ID temperature ``floor_log`` exports exactly as a ``mistral3`` GGUF; ``query_log`` and
  ``length_log`` have no llama.cpp equivalent: they export as ``llama`` GGUFs that are exact inside the
  training length L and run WITHOUT the temperature beyond it (the summary and ``general.description`` say so).
- ``rotary_window`` / ``far_field`` change the attention itself (keys scored by the unrotated pairs only);
  no llama.cpp architecture does that, so such models are refused.

This is the tool layer: it reads the folder's files (config.json, safetensors, tokenizer) and never builds
the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import HfRopeIDError
from .rope_id import (
    ROPE_TYPE,
    RopeIDParameterError,
    RopeIDParameters,
    head_dim_of,
    inv_freq,
)

DTYPES = ("f32", "f16", "q8_0")
SUPPORTED_MODEL_TYPES = {"llama": "LlamaForCausalLM", "llama_rope_id": "LlamaRopeIDForCausalLM"}
# Frequency factor of an unrotated pair: its angle p * base**(-2i/d) / 1e30 is below 1e-20 rad at any
# position llama.cpp can hold, and 1e30 is a finite float32 (inf would break fast-math backends).
NOPE_FREQ_FACTOR = 1e30
# llama.cpp's loader needs tokenizer.ggml.merges for every "gpt2" vocabulary, and gguf-py refuses an empty
# array. A merge whose left part has two characters can never fire (BPE starts from single characters and
# this is the only merge), so it makes a merges-free byte-level tokenizer loadable without changing it.
NEVER_FIRING_MERGE = "ĠĠ ĠĠ"


class GGUFExportError(HfRopeIDError, ValueError):
    """The folder cannot be exported to GGUF; the message says why and what to do."""


def _say(message: str) -> None:
    import sys

    print(f"[hf-ropeid] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- config


def _load_config(folder: Path):
    from transformers import AutoConfig

    raw = json.loads((folder / "config.json").read_text())
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise GGUFExportError(
            f"{folder} holds a {model_type!r} model; GGUF export supports Llama checkpoints only "
            f"(model_type {' or '.join(repr(t) for t in SUPPORTED_MODEL_TYPES)}). For other architectures use "
            "llama.cpp's convert_hf_to_gguf.py."
        )
    architectures = raw.get("architectures") or [SUPPORTED_MODEL_TYPES[model_type]]
    if architectures[0] not in SUPPORTED_MODEL_TYPES.values():
        raise GGUFExportError(
            f"{folder} is a {architectures[0]}; GGUF export supports the causal LM classes "
            f"{', '.join(SUPPORTED_MODEL_TYPES.values())} only."
        )
    # The package is registered, so a converted folder's config loads without running its remote code.
    return AutoConfig.from_pretrained(folder), model_type


def rope_plan(config: Any, model_type: str) -> dict[str, Any]:
    """How the folder's positions map onto llama.cpp: frequencies, temperature, architecture, differences.

    Returns ``frequencies`` (float64 [head_dim/2], radians per token, 0 = unrotated, or None for plain RoPE),
    ``rope_id`` (RopeIDParameters or None), ``arch`` ("llama" or "mistral3"), ``temperature`` (the one the
    transformers model applies), ``exact_up_to`` (None: every length; else the last exact 0-based position + 1)
    and ``differences`` (sentences, empty when the export is exact everywhere).
    """
    rope = dict(config.rope_parameters or {})
    rope_type = rope.get("rope_type", "default")
    plan: dict[str, Any] = {
        "rope_type": rope_type, "rope_theta": float(rope.get("rope_theta", 10_000.0)), "frequencies": None,
        "rope_id": None, "arch": "llama", "temperature": "none", "exact_up_to": None, "differences": [],
    }
    if rope_type == "default":
        return plan
    if rope_type != ROPE_TYPE:
        raise GGUFExportError(
            f"rope_type {rope_type!r} is not supported by this exporter (it writes plain RoPE and RoPE-ID); "
            "use llama.cpp's convert_hf_to_gguf.py for the built-in rope types."
        )
    try:
        params = RopeIDParameters.from_config(config)
    except RopeIDParameterError as error:
        raise GGUFExportError(f"Invalid rope_id parameters in config.json: {error}") from error
    if params.rotary_window is not None or params.far_field != "none":
        raise GGUFExportError(
            f"This model uses rotary_window={params.rotary_window} / far_field={params.far_field!r}: far keys are "
            "scored by the unrotated pairs only, which no llama.cpp architecture can express (its attention "
            "scores every key on all channels). Export a model converted with `--recipe portable` (no window), or "
            "serve this one with transformers."
        )
    plan.update(rope_id=params, frequencies=inv_freq(params), rope_theta=params.rope_theta)
    # A stock LlamaForCausalLM with rope_type rope_id gets the spectrum through ROPE_INIT_FUNCTIONS but its
    # attention applies no temperature; only LlamaRopeIDForCausalLM applies one.
    temperature = params.temperature if model_type == "llama_rope_id" else "none"
    plan["temperature"] = temperature
    length = params.training_length
    if temperature == "floor_log":
        plan["arch"] = "mistral3"
    elif temperature != "none":
        formula = {
            "query_log": f"(1 + {params.temperature_coefficient:g} ln(p/L))^2",
            "length_log": "ln(p)/ln(L)",
        }[temperature]
        plan["exact_up_to"] = length
        plan["differences"].append(
            f"Beyond the training length L = {length} tokens llama.cpp runs WITHOUT the model's query temperature "
            f"'{temperature}' (queries at 1-based position p > L multiplied by {formula} in transformers): llama.cpp "
            "has no such temperature (its only one, in the llama4/mistral3 archs, is the floored log "
            "1 + beta ln(1 + floor(i/L))). Inside L the export is exact. For an export exact at every length, "
            "use rope_parameters temperature 'floor_log' (and fine-tune or evaluate the model with it)."
        )
    return plan


def rope_freq_factors(frequencies: torch.Tensor, rope_theta: float, head_dim: int) -> np.ndarray:
    """llama.cpp's ``rope_freqs`` for per-pair angular frequencies ``frequencies`` (0 = unrotated), float32.

    llama.cpp rotates pair i by ``p * rope_theta**(-2i/d) / ff_i``, so ``ff_i = rope_theta**(-2i/d) / w_i``.
    """
    base = rope_theta ** (-2.0 * torch.arange(head_dim // 2, dtype=torch.float64) / head_dim)
    factors = torch.full_like(base, NOPE_FREQ_FACTOR)
    rotated = frequencies > 0
    factors[rotated] = base[rotated] / frequencies.to(torch.float64)[rotated]
    return factors.to(torch.float32).numpy()


# -------------------------------------------------------------------------------------------- weights


def interleave_rotary_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """HF half-split q/k rows of each head -> llama.cpp's interleaved layout (``LlamaModel.permute``)."""
    return weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def deinterleave_rotary_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The inverse of ``interleave_rotary_rows``."""
    return weight.reshape(num_heads, weight.shape[0] // num_heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / name for name in names]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise GGUFExportError(f"{folder} has no model.safetensors (or index); export needs safetensors weights.")


def _hf_tensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for file in _weight_files(folder):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                yield name, f.get_tensor(name)



def _gguf_tensors(folder: Path, config: Any, tensor_names) -> Iterator[tuple[str, torch.Tensor]]:
    """(GGUF name, float32 tensor in llama.cpp's layout) for every weight of the folder."""
    num_heads, num_kv_heads = config.num_attention_heads, config.num_key_value_heads
    for name, tensor in _hf_tensors(folder):
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if name == "lm_head.weight" and getattr(config, "tie_word_embeddings", False):
            continue  # llama.cpp reuses token_embd when output.weight is absent
        tensor = tensor.to(torch.float32)
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            tensor = interleave_rotary_rows(tensor, num_heads)
        elif name.endswith(("k_proj.weight", "k_proj.bias")):
            tensor = interleave_rotary_rows(tensor, num_kv_heads)
        gguf_name = tensor_names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise GGUFExportError(f"The weight {name!r} has no llama.cpp counterpart; is this a plain Llama checkpoint?")
        yield gguf_name, tensor


def _tensor_type(gguf_name: str, data: np.ndarray, dtype: str):
    import gguf

    # As convert_hf_to_gguf.py: 1-D tensors and norms stay F32 (most llama.cpp code needs them so).
    if data.ndim <= 1 or gguf_name.endswith("_norm.weight") or dtype == "f32":
        return gguf.GGMLQuantizationType.F32
    return gguf.GGMLQuantizationType.F16 if dtype == "f16" else gguf.GGMLQuantizationType.Q8_0


# ------------------------------------------------------------------------------------------ tokenizer


def _looks_special(token: str) -> bool:
    # convert_hf_to_gguf.py's does_token_look_special: added tokens some models forget to mark as special.
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def _pre_tokenizer(tokenizer, merges: list[str], override: str | None) -> str:
    from .gguf_pretokenizers import CHECK_TEXT, PRE_TOKENIZER_BY_HASH

    if override:
        return override
    digest = sha256(str(tokenizer.encode(CHECK_TEXT)).encode()).hexdigest()
    if digest in PRE_TOKENIZER_BY_HASH:
        return PRE_TOKENIZER_BY_HASH[digest]
    if not merges:
        return "default"  # every byte is its own token: how the text is split first cannot matter
    raise GGUFExportError(
        f"llama.cpp does not know this tokenizer's pre-tokenizer (check hash {digest}). Pass tokenizer_pre= one "
        "of llama.cpp's names (e.g. 'llama-bpe', 'smollm', 'gpt-2', 'qwen2'; see llama.cpp's "
        "convert_hf_to_gguf_update.py) if you know which one it uses."
    )


def _add_tokenizer(writer, folder: Path, config: Any, tokenizer_pre: str | None) -> dict[str, Any]:
    """Writes a GPT-2 (byte-level BPE) vocabulary as convert_hf_to_gguf.py's ``_set_vocab_gpt2`` does."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer_json = folder / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise GGUFExportError(f"{folder} has no tokenizer.json; GGUF export needs the tokenizer (a byte-level BPE one).")
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise GGUFExportError(
            "Only byte-level BPE tokenizers (GPT-2 style: Llama 3, SmolLM, ...) are exported; this one is "
            f"{model.get('type')} with decoder {decoder.get('type')}. Use llama.cpp's convert_hf_to_gguf.py for "
            "SentencePiece vocabularies."
        )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    vocab = tokenizer.get_vocab()
    vocab_size = config.vocab_size
    if max(vocab.values()) >= vocab_size:
        raise GGUFExportError(f"The tokenizer has ids up to {max(vocab.values())}, beyond the model's vocab_size {vocab_size}.")
    by_id = {i: text for text, i in vocab.items()}
    added = tokenizer.get_added_vocab()
    added_decoder = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        text = by_id[i]
        if text in added:
            if not added_decoder[i].normalized:
                # llama.cpp assumes CONTROL / USER_DEFINED tokens are pre-normalised (as the converter does).
                text = tokenizer.decode(tokenizer.encode(text, add_special_tokens=False))
            if added_decoder[i].special or _looks_special(text):
                types.append(gguf.TokenType.CONTROL)
            else:
                text = text.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(text)

    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    pre = _pre_tokenizer(tokenizer, special.merges, tokenizer_pre)
    if not special.merges:
        special.merges = [NEVER_FIRING_MERGE]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special.add_to_gguf(writer, quiet=True)
    if getattr(tokenizer, "add_bos_token", None) is not None and "bos" not in special.add_special_token:
        writer.add_add_bos_token(bool(tokenizer.add_bos_token))
    return {"model": "gpt2", "pre": pre, "tokens": len(tokens), "merges": len(special.merges),
            "chat_template": special.chat_template is not None}


# -------------------------------------------------------------------------------------------- export


def _description(plan: dict[str, Any], config: Any) -> str:
    params: RopeIDParameters | None = plan["rope_id"]
    if params is None:
        return "Llama with plain RoPE, exported by hf-ropeid."
    rotated = params.num_rotated_pairs
    text = (
        f"RoPE-ID Llama exported by hf-ropeid: {rotated} of {params.num_pairs} channel pairs per head rotate "
        f"(spectrum '{params.spectrum}', in rope_freqs), the other {params.num_pairs - rotated} are unrotated (NoPE, "
        f"rope_freqs {NOPE_FREQ_FACTOR:g}). Training length L = {params.training_length}; context_length = "
        f"{config.max_position_embeddings} (the serving length)."
    )
    if plan["temperature"] == "floor_log":
        text += (
            f" Query temperature 1 + {params.temperature_coefficient:g} ln(1 + floor(i/L)) (mistral3 arch "
            "attention.temperature_scale): identical to transformers at every length."
        )
    elif plan["differences"]:
        text += " DIFFERS FROM TRANSFORMERS: " + " ".join(plan["differences"])
    else:
        text += " No query temperature: identical to transformers at every length."
    return text


def export_gguf(
    folder: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    dtype: str = "f32",
    force: bool = False,
    tokenizer_pre: str | None = None,
) -> dict[str, Any]:
    """Writes the Llama / RoPE-ID checkpoint ``folder`` as the llama.cpp GGUF file ``out_path``.

    Args:
        folder: a converted (``llama_rope_id``), merged or plain Llama checkpoint folder with safetensors
            weights and a byte-level BPE tokenizer.json.
        out_path: the .gguf file to write; an existing file is replaced only with ``force``.
        dtype: "f32", "f16" or "q8_0" for the matrices (norms, 1-D tensors and rope_freqs stay F32; a matrix
            whose rows do not split into Q8_0 blocks falls back to F16, as in llama.cpp's converter).
        force: replace an existing ``out_path``.
        tokenizer_pre: llama.cpp's pre-tokenizer name, for a tokenizer llama.cpp's table does not know.

    The file is written to ``<out_path>.partial`` and renamed at the end; nothing is left on error.
    Returns a summary dict: path, architecture, dtype, context_length, training_length, head_dim,
    rotated_pairs, nope_pairs, temperature, exact_up_to (None: exact at every length), differences
    (sentences to show the user; empty when exact everywhere), tensors, bytes, tokenizer.
    Raises GGUFExportError (a ValueError) with one message for anything that cannot be exported.
    """
    import gguf

    folder, out_path = Path(folder).expanduser(), Path(out_path).expanduser()
    if dtype not in DTYPES:
        raise GGUFExportError(f"Unknown dtype {dtype!r}; accepted: {', '.join(DTYPES)}.")
    if not (folder / "config.json").is_file():
        raise GGUFExportError(f"{folder} is not a checkpoint folder (no config.json).")
    if out_path.is_dir():
        raise GGUFExportError(f"{out_path} is a folder; give the path of the .gguf file to write.")
    if out_path.exists() and not force:
        raise GGUFExportError(f"{out_path} exists; pass --force (force=True) to replace it.")
    config, model_type = _load_config(folder)
    plan = rope_plan(config, model_type)
    head_dim = head_dim_of(config)
    if config.num_attention_heads * head_dim != config.hidden_size and getattr(config, "head_dim", None) is None:
        raise GGUFExportError("hidden_size is not num_attention_heads * head_dim and config.json gives no head_dim.")
    arch = gguf.MODEL_ARCH.MISTRAL3 if plan["arch"] == "mistral3" else gguf.MODEL_ARCH.LLAMA
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    tensor_names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    params: RopeIDParameters | None = plan["rope_id"]

    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    writer = gguf.GGUFWriter(partial, arch_name)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(folder.name)
        writer.add_description(_description(plan, config))
        writer.add_block_count(config.num_hidden_layers)
        writer.add_context_length(int(config.max_position_embeddings))
        writer.add_embedding_length(config.hidden_size)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_rope_freq_base(plan["rope_theta"])
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(head_dim)  # llama.cpp: no partial rotary, the whole head
        if getattr(config, "head_dim", None) is not None:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        writer.add_file_type(ftype)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        if params is not None:
            if plan["temperature"] == "floor_log":
                # mistral3: queries * (1 + beta ln(1 + floor(i / original_context_length))), offset 0.
                writer.add_attn_temperature_scale(params.temperature_coefficient)
                writer.add_rope_scaling_orig_ctx_len(params.training_length)
            # Not read by llama.cpp: lets tools (and the round-trip test) recover the exact settings.
            writer.add_string("hf_ropeid.rope_parameters", json.dumps(params.to_rope_parameters()))
            writer.add_string("hf_ropeid.temperature", plan["temperature"])
            writer.add_uint32("hf_ropeid.training_length", params.training_length)
        tokenizer_summary = _add_tokenizer(writer, folder, config, tokenizer_pre)

        count = 0
        if plan["frequencies"] is not None:
            factors = rope_freq_factors(plan["frequencies"], plan["rope_theta"], head_dim)
            writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors,
                              raw_dtype=gguf.GGMLQuantizationType.F32)
            count += 1
        for name, tensor in _gguf_tensors(folder, config, tensor_names):
            data = tensor.numpy()
            qtype = _tensor_type(name, data, dtype)
            try:
                packed = gguf.quants.quantize(data, qtype)
            except gguf.QuantError:  # rows not a multiple of the Q8_0 block: F16, as llama.cpp's converter
                qtype = gguf.GGMLQuantizationType.F16
                packed = gguf.quants.quantize(data, qtype)
            writer.add_tensor(name, packed, raw_dtype=qtype)
            count += 1
        _say(f"writing {out_path} ({count} tensors, {dtype}) ...")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, out_path)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise

    summary = {
        "path": str(out_path),
        "architecture": arch_name,
        "dtype": dtype,
        "context_length": int(config.max_position_embeddings),
        "training_length": params.training_length if params else None,
        "head_dim": head_dim,
        "rotated_pairs": params.num_rotated_pairs if params else head_dim // 2,
        "nope_pairs": (params.num_pairs - params.num_rotated_pairs) if params else 0,
        "temperature": plan["temperature"],
        "exact_up_to": plan["exact_up_to"],
        "differences": list(plan["differences"]),
        "tensors": count,
        "bytes": out_path.stat().st_size,
        "tokenizer": tokenizer_summary,
    }
    return summary


def describe_summary(summary: dict[str, Any]) -> str:
    """The lines a command prints after an export (what llama.cpp will and will not reproduce)."""
    lines = [
        (
            f"wrote {summary['path']} ({summary['bytes'] / 2**20:.1f} MiB, arch {summary['architecture']}, {summary['dtype']}, "
            f"{summary['tensors']} tensors, context_length {summary['context_length']})"
        ),
    ]
    if summary["training_length"] is not None:
        lines.append(
            f"RoPE-ID: {summary['rotated_pairs']} rotated + {summary['nope_pairs']} unrotated pairs per head in rope_freqs; "
            f"training length {summary['training_length']}; temperature {summary['temperature']}"
        )
    if summary["exact_up_to"] is None:
        lines.append("llama.cpp computes what transformers computes at every length (up to float rounding).")
    else:
        lines.append(f"Exact up to position {summary['exact_up_to']}; beyond it:")
        lines.extend(f"  - {d}" for d in summary["differences"])
    return "\n".join(lines)


__all__ = [
    "DTYPES",
    "GGUFExportError",
    "deinterleave_rotary_rows",
    "describe_summary",
    "export_gguf",
    "interleave_rotary_rows",
    "rope_freq_factors",
    "rope_plan",
]
