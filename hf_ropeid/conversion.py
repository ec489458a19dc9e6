"""Convert trained Llama checkpoints to RoPE-ID, in memory or folder to folder.

Two choices make a conversion (both measured in benchmarks/conversion_perplexity.py):

- the spectrum and rotated fraction (any RoPE-ID parameter, see ``rope_id.py``); ``rotary_fraction``
  may also be ``"auto"``: as many pairs as the original spectrum has frequencies completing at
  least ``turns_per_training_length`` turns inside the training length ``L``, or ``"auto:T"``: at
  least ``T`` turns (with the "minimal" spectrum, the pairs between ``T`` and
  ``turns_per_training_length`` turns are sped up to complete the required turns);
- which channel pairs rotate (``channel_selection``):
  - ``"frequency"``: the fastest original pairs (indices ``0..n-1``) rotate; weights are untouched,
    so a folder conversion copies the safetensors files byte for byte;
  - ``"calibrated"``: per layer and KV group, the ``n`` pairs with the largest query/key energy on a
    calibration text rotate. Their W_q/W_k rows (and biases) are permuted to indices ``0..n-1``,
    keeping their original order among themselves; the other pairs follow in original order.

Energy of pair ``j`` (channels ``j`` and ``j + d/2``) in KV group ``g`` is
``mean_t |k_{g,j}(t)|^2 * mean_{t, h in g} |q_{h,j}(t)|^2``, the square of the RMS bound on that
pair's contribution to the q.k logits. Rotation never changes a pair's norm, so it is measured on
the projections before RoPE.

A conversion may start from a recipe (``parameters.RECIPES``; options given explicitly win). The ``convert``
and ``finetune`` commands default to ``"far-context"``, the configuration measured best past L after LoRA at L
(benchmarks/RESULTS.md §10-11); the functions here apply a recipe only when given one. Without one (or with
``"portable"``, no window) unset options take ``DEFAULT_CONVERSION``, the settings with the lowest perplexity
inside L without fine-tuning (benchmarks/results/conversion/), which run in every attention kernel.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .assets import PROVENANCE_FILE
from .atomic import atomic_directory, check_target, write_json_atomic
from .configuration_rope_id import RopeIDConfig
from .errors import HfRopeIDError
from .parameters import ROPE_ID_OPTION_KEYS, apply_recipe, parse_auto_turns
from .rope_id import RopeIDParameterError, original_inv_freq
from .utils import DTYPES, SAFETENSORS_DTYPES, head_dim_of, say, sha256_file

CHANNEL_SELECTIONS = ("frequency", "calibrated")
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)

# Best measured on SmolLM2-135M-Instruct without fine-tuning (geometric mean of perplexity at
# 256-2048 tokens on Hamlet, confirmed on King Lear): every pair that completes at least half a turn
# inside L rotates (22 of 32); those already turning twice keep their original frequency (19), the
# slower ones are sped up to two turns; the rest are NoPE. Calibrated selection was far worse.
# Serving max_position_embeddings = 16 x L (L = training_length, which the model reads instead). vLLM's and
# SGLang's Transformers backend cap the context at max_position_embeddings and at the tokenizer's
# model_max_length; 16 L is as far as the RoPE-ID evaluations reach (benchmarks/RESULTS.md), so the cap
# does not hide a length we measured, while still telling engines (and users) where it was tested.
SERVING_LENGTH_FACTOR = 16

DEFAULT_CONVERSION: dict[str, Any] = {
    "channel_selection": "frequency",
    "spectrum": "minimal",
    "rotary_fraction": "auto:0.5",
}
# With another spectrum and no rotary_fraction: "original" rotates only pairs that already turn
# enough (p-RoPE meeting RoPE-ID's condition), "rope_id" follows the paper.
DEFAULT_ROTARY_FRACTION = {"minimal": "auto:0.5", "original": "auto", "rope_id": 0.5}

# Files copied verbatim from the source folder (tokenizer, chat template, generation settings).
COPIED_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
COPIED_PATTERNS = ("LICENSE*", "NOTICE*", "USE_POLICY*")

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
_QK_NAME = re.compile(r"^model\.layers\.(\d+)\.self_attn\.([qk])_proj\.(weight|bias)$")


class ConversionError(HfRopeIDError, ValueError):
    """The source, the target or an option cannot be converted; the message says what is accepted."""


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------


def auto_rotary_fraction(head_dim: int, rope_theta: float, training_length: int, turns: float) -> float:
    """Fraction of pairs whose original frequency completes at least ``turns`` turns inside ``L``.

    SmolLM2-135M (head_dim 64, theta 1e5, L 8192, 2 turns): 19 of 32 pairs.
    """
    turns_inside = original_inv_freq(head_dim, rope_theta) * training_length / (2 * math.pi)
    count = int((turns_inside >= turns * (1 - 1e-9)).sum())
    if count == 0:
        raise RopeIDParameterError(
            f"rotary_fraction 'auto' found no original frequency completing {turns} turns inside "
            f"training_length {training_length}; give rotary_fraction as a number."
        )
    return count / (head_dim // 2)


def check_architecture(model_type: str | None, architectures: Sequence[str] | None) -> None:
    """Raises ConversionError, naming what is supported, unless this is a LlamaForCausalLM."""
    architectures = list(architectures or [])
    if model_type == RopeIDConfig.model_type:
        raise ConversionError("The source is already a RoPE-ID checkpoint (model_type 'llama_rope_id').")
    if model_type != "llama" or any(a not in SUPPORTED_ARCHITECTURES for a in architectures):
        found = ", ".join(architectures) or f"model_type {model_type!r}"
        raise ConversionError(
            f"Unsupported architecture: {found}. Supported: {', '.join(SUPPORTED_ARCHITECTURES)} "
            "(model_type 'llama'). Mistral, Qwen2 and others are not converted yet."
        )


def check_source_config(config: Any) -> None:
    """Raises ConversionError unless ``config`` is a plain-RoPE Llama this converter supports."""
    check_architecture(getattr(config, "model_type", None), getattr(config, "architectures", None))
    rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope_type != "default":
        raise ConversionError(
            f"The source uses rope_type {rope_type!r}; only plain RoPE ('default') checkpoints can be converted "
            "(a rescaled spectrum such as 'llama3' or 'yarn' would need its own frequency mapping)."
        )
    head_dim = head_dim_of(config)
    if head_dim % 2:
        raise ConversionError(
            f"head_dim is {head_dim}, an odd number; RoPE pairs channel i with i + head_dim/2, so it must be even."
        )


def rope_id_config(source_config: Any, **rope_id_parameters: Any) -> RopeIDConfig:
    """The RopeIDConfig of a converted model: every source setting plus RoPE-ID positions.

    Unset parameters take ``DEFAULT_CONVERSION`` (spectrum; rotary_fraction from
    ``DEFAULT_ROTARY_FRACTION`` for that spectrum), then RoPE-ID's own defaults;
    ``training_length`` defaults to the source's ``max_position_embeddings``. ``recipe`` (a name of
    ``parameters.RECIPES``; None: none) fills the parameters not given before those defaults.
    """
    check_source_config(source_config)
    recipe = rope_id_parameters.pop("recipe", None)
    unknown = sorted(set(rope_id_parameters) - set(ROPE_ID_OPTION_KEYS))
    if unknown:
        raise RopeIDParameterError(
            f"Unknown RoPE-ID parameter(s) {unknown}; accepted: {', '.join(ROPE_ID_OPTION_KEYS)}."
        )
    params = {k: v for k, v in rope_id_parameters.items() if v is not None}
    params.setdefault("training_length", source_config.max_position_embeddings)
    length = params["training_length"]
    if isinstance(length, bool) or not isinstance(length, (int, float)) or int(length) != length or length < 2:
        raise RopeIDParameterError(f"training_length must be a whole number of tokens, at least 2, got {length!r}.")
    params = apply_recipe(params, recipe)
    params.setdefault("spectrum", DEFAULT_CONVERSION["spectrum"])
    params.setdefault(
        "rotary_fraction", DEFAULT_ROTARY_FRACTION.get(params["spectrum"], DEFAULT_CONVERSION["rotary_fraction"])
    )
    if isinstance(params["rotary_fraction"], str):
        params["rotary_fraction"] = auto_rotary_fraction(
            head_dim_of(source_config),
            params.get("rope_theta", source_config.rope_parameters.get("rope_theta", 10_000.0)),
            params["training_length"],
            parse_auto_turns(params["rotary_fraction"], params.get("turns_per_training_length", 2.0)),
        )
    return RopeIDConfig.from_llama_config(source_config, **params)


@contextmanager
def empty_weights() -> Iterator[None]:
    """Modules built inside have meta-device parameters and skip their (slow, pointless) initialisation."""
    from transformers.initialization import no_init_weights

    with torch.device("meta"), no_init_weights():
        yield


# ----------------------------------------------------------------------------------------------
# Channel selection
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def pair_energies(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Query/key energy of every channel pair, float64 ``[layers, kv_heads, head_dim/2]``.

    ``mean_t |k_pair|^2 * mean_{t, heads of the group} |q_pair|^2`` (see the module docstring),
    from one forward pass of ``model`` (a Llama) over ``input_ids`` (``[batch, seq]``, no padding).
    """
    config = model.config
    d, heads, kv_heads = head_dim_of(config), config.num_attention_heads, config.num_key_value_heads
    layers = model.model.layers
    sums = {}

    def hook(key):
        def record(_module, _inputs, output):
            channels = output.detach().to(torch.float64).reshape(-1, output.shape[-1] // d, d).square().mean(0)
            sums[key] = channels[:, : d // 2] + channels[:, d // 2 :]  # [heads, pairs]

        return record

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.self_attn.q_proj.register_forward_hook(hook((i, "q"))))
        handles.append(layer.self_attn.k_proj.register_forward_hook(hook((i, "k"))))
    ids = torch.as_tensor(input_ids)
    was_training = model.training
    try:
        model.eval()  # no dropout noise in the measurement
        model.model(input_ids=ids.reshape(-1, ids.shape[-1]).to(model.device), use_cache=False)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    energies = torch.empty(len(layers), kv_heads, d // 2, dtype=torch.float64)
    for i in range(len(layers)):
        q = sums[(i, "q")].reshape(kv_heads, heads // kv_heads, d // 2).mean(1)
        energies[i] = q * sums[(i, "k")]
    return energies


def calibrated_permutations(energies: torch.Tensor, num_rotated_pairs: int) -> torch.Tensor:
    """Pair permutations ``[layers, kv_heads, pairs]``: new pair ``i`` takes old pair ``perm[i]``.

    The ``num_rotated_pairs`` most energetic pairs come first, then the rest; each part keeps the
    original order, so faster original pairs get faster new frequencies.
    """
    top = energies.topk(num_rotated_pairs, dim=-1).indices
    chosen = torch.zeros_like(energies, dtype=torch.bool).scatter_(-1, top, True)
    # Stable sort on "not chosen" puts the chosen pairs first, each group in original order.
    return torch.sort((~chosen).to(torch.int8), dim=-1, stable=True).indices


def _row_index(pair_permutation: torch.Tensor, heads_per_kv: int) -> torch.Tensor:
    """Row order of a q/k projection (``[kv * heads_per_kv * d]``) for per-KV-head pair permutations."""
    kv_heads, pairs = pair_permutation.shape
    d = 2 * pairs
    channels = torch.cat([pair_permutation, pair_permutation + pairs], dim=-1)  # j and j + d/2 move together
    per_head = channels.repeat_interleave(heads_per_kv, dim=0)  # query head h shares KV head h // heads_per_kv
    return (torch.arange(kv_heads * heads_per_kv)[:, None] * d + per_head).reshape(-1)


def permute_rotary_pairs(
    tensors: Mapping[str, torch.Tensor], permutations: torch.Tensor, config: Any
) -> dict[str, torch.Tensor]:
    """Returns ``tensors`` (a Llama state dict, or part of one) with W_q/W_k rows and biases permuted.

    ``permutations``: ``[layers, kv_heads, head_dim/2]``. Query and key rows move together, so q.k
    is unchanged when each pair keeps its frequency; values and o_proj never move.
    """
    heads_per_kv = config.num_attention_heads // config.num_key_value_heads
    out = dict(tensors)
    for name, tensor in tensors.items():
        match = _QK_NAME.match(name)
        if match:
            layer, which = int(match.group(1)), match.group(2)
            rows = _row_index(permutations[layer], heads_per_kv if which == "q" else 1)
            out[name] = tensor.index_select(0, rows.to(tensor.device))
    return out


# ----------------------------------------------------------------------------------------------
# In memory
# ----------------------------------------------------------------------------------------------


def convert_model(
    model: torch.nn.Module,
    *,
    channel_selection: str = DEFAULT_CONVERSION["channel_selection"],
    calibration_input_ids: torch.Tensor | None = None,
    **rope_id_parameters: Any,
):
    """A LlamaRopeIDForCausalLM with the weights of ``model`` (a LlamaForCausalLM), which is left untouched.

    Args:
        model: the source model (any dtype/device).
        channel_selection: "frequency" or "calibrated" (needs ``calibration_input_ids``).
        calibration_input_ids: ``[batch, seq]`` token ids of a representative text.
        **rope_id_parameters: any RoPE-ID parameter (see ``rope_id.PARAMETER_KEYS``);
            ``rotary_fraction="auto"`` or ``"auto:T"`` is accepted. Unset: ``DEFAULT_CONVERSION``.
    """
    from transformers import LlamaForCausalLM

    from .modeling_rope_id import LlamaRopeIDForCausalLM

    if not isinstance(model, LlamaForCausalLM) or isinstance(model, LlamaRopeIDForCausalLM):
        check_source_config(model.config)  # names what is wrong (already RoPE-ID, other architecture)
        raise ConversionError(f"Expected a LlamaForCausalLM, got {type(model).__name__}.")
    config = rope_id_config(model.config, **rope_id_parameters)
    config._attn_implementation = model.config._attn_implementation
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    permutations = select_channels(model, config, channel_selection, calibration_input_ids)
    if permutations is not None:
        state = permute_rotary_pairs(state, permutations, config)
    with empty_weights():
        converted = LlamaRopeIDForCausalLM(config)
    converted.load_state_dict(state, strict=True, assign=True)
    converted.tie_weights()
    converted.to(next(model.parameters()).device)
    converted.generation_config = model.generation_config
    return converted.train(model.training)


def select_channels(
    model: torch.nn.Module, config: RopeIDConfig, channel_selection: str, calibration_input_ids
) -> torch.Tensor | None:
    """Pair permutations for ``channel_selection`` (None: weights stay as they are)."""
    if channel_selection not in CHANNEL_SELECTIONS:
        raise ConversionError(
            f"Unknown channel_selection {channel_selection!r}; accepted: {', '.join(CHANNEL_SELECTIONS)}."
        )
    if channel_selection == "frequency":
        return None
    if calibration_input_ids is None:
        raise ConversionError(
            "channel_selection 'calibrated' needs calibration_input_ids (token ids of a sample text)."
        )
    num_rotated = int(round(config.rope_parameters["rotary_fraction"] * head_dim_of(config) / 2))
    return calibrated_permutations(pair_energies(model, calibration_input_ids), num_rotated)


# ----------------------------------------------------------------------------------------------
# Folder to folder
# ----------------------------------------------------------------------------------------------


def resolve_source(source: str | os.PathLike) -> tuple[Path, str | None]:
    """``(folder, hub_id)``: a local folder as is (hub_id None); a Hub id is downloaded where a network exists."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path, None
    text = str(source)
    if path.exists() or text.startswith((".", "/", "~")) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text):
        raise ConversionError(f"Source {text!r} is not a folder (expected a model folder or a Hub id like 'org/name').")
    from huggingface_hub import snapshot_download

    say(f"{text} is not a local folder; downloading it from the Hugging Face Hub ...")
    try:
        folder = snapshot_download(
            text, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "README.md", "LICENSE*"]
        )
    except Exception as error:  # offline, unknown repo, gated, ...: say what was tried
        raise ConversionError(
            f"Source {text!r} is not a local folder, and downloading it from the Hub failed: {error}"
        ) from error
    return Path(folder), text


def load_source_config(source: Path):
    from transformers import LlamaConfig

    config_file = source / "config.json"
    if not config_file.is_file():
        raise ConversionError(
            f"No config.json in {source}; expected a Hugging Face model folder (config.json + *.safetensors)."
        )
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ConversionError(f"{config_file} is not valid JSON: {error}") from error
    check_architecture(raw.get("model_type"), raw.get("architectures"))  # LlamaConfig would read a Qwen2 config
    head_dim = head_dim_of(raw)
    if head_dim % 2:
        raise ConversionError(
            f"head_dim is {head_dim}, an odd number; RoPE pairs channel i with i + head_dim/2, so it must be even."
        )
    try:
        config = LlamaConfig.from_pretrained(source)
    except (ValueError, TypeError) as error:
        raise ConversionError(f"{config_file} is not a valid Llama configuration: {error}") from error
    check_source_config(config)
    return config


def weight_files(source: Path) -> list[Path]:
    """The safetensors files of a checkpoint (one file, or the shards listed in its index)."""
    if (source / SAFE_INDEX).is_file():
        try:
            weight_map = json.loads((source / SAFE_INDEX).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as error:
            raise ConversionError(f"{source / SAFE_INDEX} is not a valid safetensors index: {error}") from error
        files = [source / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ConversionError(f"Weight shards listed in {SAFE_INDEX} are missing from {source}: {missing}.")
        return files
    if (source / SAFE_WEIGHTS).is_file():
        return [source / SAFE_WEIGHTS]
    if list(source.glob("pytorch_model*.bin")):
        raise ConversionError(
            f"{source} has only PyTorch .bin weights; the converter reads safetensors. Re-save the model first: "
            "AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst) writes safetensors."
        )
    raise ConversionError(f"No weights in {source}: expected {SAFE_WEIGHTS} or {SAFE_INDEX} with its shards.")


def read_weight_headers(files: Sequence[Path]) -> dict[str, tuple[str, tuple[int, ...], Path]]:
    """name -> (safetensors dtype, shape, file) for every tensor; truncated or corrupt files raise."""
    from safetensors import SafetensorError, safe_open

    headers = {}
    for file in files:
        try:
            with safe_open(file, "pt") as f:
                for name in f.keys():
                    piece = f.get_slice(name)
                    headers[name] = (piece.get_dtype(), tuple(piece.get_shape()), file)
        except (SafetensorError, OSError) as error:
            raise ConversionError(
                f"Cannot read {file}: {error}. The file is truncated or corrupted; copy or download it again."
            ) from error
    return headers


def expected_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of a LlamaForCausalLM with ``config`` (tests compare this with the real model).

    Written out rather than read from a meta-device model: building one costs more than copying a
    small checkpoint, and the converter aims at the speed of a plain copy.
    """
    hidden, inter, d = config.hidden_size, config.intermediate_size, head_dim_of(config)
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    shapes = {
        "model.embed_tokens.weight": (config.vocab_size, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (config.vocab_size, hidden),
    }
    layer = {
        "self_attn.q_proj": (q, hidden),
        "self_attn.k_proj": (kv, hidden),
        "self_attn.v_proj": (kv, hidden),
        "self_attn.o_proj": (hidden, q),
        "mlp.gate_proj": (inter, hidden),
        "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        for name, shape in layer.items():
            shapes[f"{prefix}{name}.weight"] = shape
            if (config.attention_bias and name.startswith("self_attn")) or (config.mlp_bias and name.startswith("mlp")):
                shapes[f"{prefix}{name}.bias"] = shape[:1]
        shapes[f"{prefix}input_layernorm.weight"] = (hidden,)
        shapes[f"{prefix}post_attention_layernorm.weight"] = (hidden,)
    return shapes


def check_weights(config: Any, headers: Mapping[str, tuple[str, tuple[int, ...], Path]]) -> None:
    """Every tensor the source config needs is there with the right shape, and nothing else."""
    expected = expected_shapes(config)
    optional = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = sorted(set(expected) - set(headers) - optional)
    unexpected = sorted(set(headers) - set(expected))
    wrong = [
        f"{k}: file {headers[k][1]}, config expects {expected[k]}"
        for k in sorted(set(expected) & set(headers))
        if headers[k][1] != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if wrong:
        problems.append("shape mismatch: " + "; ".join(wrong[:5]) + (" ..." if len(wrong) > 5 else ""))
    if problems:
        raise ConversionError("The weights do not match config.json: " + " | ".join(problems) + ".")


def check_finite(files: Sequence[Path]) -> None:
    """Reads every floating-point tensor of ``files``; a NaN or infinite value is a ConversionError naming the tensor.

    Run on the source before anything is written (also with ``verify=False``): a corrupted source
    must not become a converted checkpoint.
    """
    from safetensors import safe_open

    bad = []
    for file in files:
        with safe_open(file, "pt") as f:
            for name in f.keys():
                tensor = f.get_tensor(name)
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    bad.append(f"{name} ({file.name}: {int((~torch.isfinite(tensor)).sum())} NaN/Inf values)")
    if bad:
        raise ConversionError(
            f"The source weights contain NaN or infinite values: {'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. "
            "The checkpoint is corrupted; download or copy it again. Nothing was written."
        )


def file_hashes(folder: Path, names: Sequence[str]) -> dict[str, str]:
    """``{name: sha256}`` of the named files of ``folder``."""
    return {name: sha256_file(folder / name) for name in names}


def _weight_and_config_names(folder: Path) -> list[str]:
    names = sorted(p.name for p in folder.glob("*.safetensors"))
    if (folder / SAFE_INDEX).is_file():
        names.append(SAFE_INDEX)
    return names + ["config.json"]


def up_to_date(target: Path, settings: Mapping[str, Any], source_files: Mapping[str, str], verify: bool) -> bool:
    """Whether ``target`` is this converter's output of the same source and settings, intact and (if asked) verified."""
    try:
        recorded = json.loads((target / "conversion.json").read_text())
        if recorded.get("settings") != json.loads(json.dumps(dict(settings), default=str)):
            return False
        if recorded.get("source_files") != dict(source_files):
            return False
        if file_hashes(target, list(recorded["files"])) != recorded["files"]:
            return False
        if verify:
            report = json.loads((target / "verification.json").read_text())
            return report.get("problems") == []
        return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def source_provenance(source: Path) -> dict[str, Any] | None:
    """What the source folder says about where its weights came from (``PROVENANCE_FILE``, written by assets)."""
    try:
        return json.loads((source / PROVENANCE_FILE).read_text())
    except (OSError, ValueError):
        return None


def check_target_folder(source: Path, target: Path, force: bool) -> None:
    """The target may be written: outside the source, a folder (or nothing), empty unless ``force``."""
    source_real, target_real = source.resolve(), target.resolve()
    if target_real == source_real or source_real.is_relative_to(target_real) or target_real.is_relative_to(source_real):
        raise ConversionError(
            f"The target {target} overlaps the source {source}; choose a folder outside it (the source is never modified)."
        )
    if target.exists() and not target.is_dir():
        raise ConversionError(f"The target {target} exists and is not a folder.")
    check_target(target, force, hint="pass --force (force=True) to replace it")


def _tokenize_file(tokenizer_source: Path, text_file: Path, max_tokens: int) -> torch.Tensor:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    text = Path(text_file).read_text(encoding="utf-8", errors="replace")
    ids = tokenizer(text[: max_tokens * 16], add_special_tokens=False)["input_ids"][:max_tokens]
    if len(ids) < 16:
        raise ConversionError(f"The calibration text {text_file} has only {len(ids)} tokens; give a longer text.")
    return torch.tensor([ids])


def _write_weights(files: Sequence[Path], staging: Path, permutations, config, dtype, max_shard_size) -> None:
    """Copies the source files as they are when nothing changes; otherwise rewrites the tensors."""
    from tqdm.auto import tqdm

    if permutations is None and dtype is None and max_shard_size is None:
        for file in tqdm(files, desc="Copying weights", unit="file", disable=len(files) < 2):
            shutil.copyfile(file, staging / file.name)
        if len(files) > 1 or files[0].name != SAFE_WEIGHTS:
            shutil.copyfile(files[0].parent / SAFE_INDEX, staging / SAFE_INDEX)
        return
    from huggingface_hub import save_torch_state_dict
    from safetensors.torch import load_file

    tensors = {}
    for file in tqdm(files, desc="Reading weights", unit="file", disable=len(files) < 2):
        tensors.update(load_file(file))
    if permutations is not None:
        tensors = permute_rotary_pairs(tensors, permutations, config)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    save_torch_state_dict(tensors, staging, max_shard_size=max_shard_size or "5GB", metadata={"format": "pt"})


def _copy_remote_code(staging: Path) -> None:
    from transformers.dynamic_module_utils import custom_object_save

    from .modeling_rope_id import LlamaRopeIDForCausalLM

    # The class itself stands in for a model: only its module (and the module's relative imports) is copied.
    custom_object_save(LlamaRopeIDForCausalLM, staging)


def convert_checkpoint(
    source: str | os.PathLike,
    target: str | os.PathLike,
    *,
    channel_selection: str = DEFAULT_CONVERSION["channel_selection"],
    calibration_text: str | os.PathLike | None = None,
    calibration_tokens: int = 2048,
    dtype: str | None = None,
    max_shard_size: int | str | None = None,
    force: bool = False,
    verify: bool = True,
    verify_text: str | os.PathLike | None = None,
    verify_lengths: Sequence[int] = (256, 1024, 2048),
    base_model: str | None = None,
    license: str | None = None,
    repo_id: str | None = None,
    serving_length: int | None = None,
    **rope_id_parameters: Any,
) -> Path:
    """Converts the checkpoint folder (or Hub id) ``source`` into a RoPE-ID folder at ``target``.

    Writes config.json (RopeIDConfig with ``auto_map``), the weights (copied when untouched,
    else rewritten in ``dtype``/shards of ``max_shard_size``), tokenizer and generation files, the
    remote code, ``conversion.json``, a model card (README.md) and, when ``verify``,
    ``verification.json`` from a fresh process that cannot import hf_ropeid. Everything is built
    in a temporary folder beside ``target`` and swapped in at the end (``hf_ropeid.atomic``). Returns ``target``.

    ``serving_length`` (default ``SERVING_LENGTH_FACTOR`` x L) becomes ``max_position_embeddings`` and the
    tokenizer's ``model_max_length``: serving engines (vLLM's and SGLang's Transformers backend) cap the
    context at both. The model does not read it: ``rope_parameters["training_length"]`` stays L.
    """
    from . import model_card

    target = Path(target).expanduser()
    source, hub_id = resolve_source(source)
    source_config = load_source_config(source)
    config = rope_id_config(source_config, **rope_id_parameters)  # parameter errors before any work
    config.max_position_embeddings = resolve_serving_length(serving_length, config.rope_parameters["training_length"])
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(
            f"Unknown dtype {dtype!r}; accepted: {', '.join(DTYPES)} (or leave it unset to keep the source's)."
        )
    if channel_selection not in CHANNEL_SELECTIONS:
        raise ConversionError(
            f"Unknown channel_selection {channel_selection!r}; accepted: {', '.join(CHANNEL_SELECTIONS)}."
        )
    _check_max_shard_size(max_shard_size)
    for option, path in (("calibration_text", calibration_text), ("verify_text", verify_text if verify else None)):
        if path is not None and not Path(path).expanduser().is_file():
            raise ConversionError(f"The {option.replace('_', '-')} file {path} does not exist (or is not a file).")
    files = weight_files(source)
    headers = read_weight_headers(files)
    check_weights(source_config, headers)
    settings = {
        "channel_selection": channel_selection,
        "requested_parameters": {k: v for k, v in rope_id_parameters.items() if v is not None},
        "calibration_text": str(Path(calibration_text).resolve()) if calibration_text else None,
        "calibration_tokens": calibration_tokens if channel_selection == "calibrated" else None,
        "dtype": dtype,
        "max_shard_size": max_shard_size,
        "base_model": base_model,
        "license": license,
        "serving_length": config.max_position_embeddings,
    }
    if target.is_dir() and not force and (target / "conversion.json").is_file():
        say(f"checking whether {target} is already this conversion ...")
        source_files = file_hashes(source, _weight_and_config_names(source))
        if up_to_date(target, settings, source_files, verify):
            say(f"already converted{' and verified' if verify else ''}: {target}; pass --force to redo")
            return target
    check_target_folder(source, target, force)
    check_finite(files)  # before anything is written, with or without verification
    source_files = file_hashes(source, _weight_and_config_names(source))
    stored = Counter(h[0] for h in headers.values()).most_common(1)[0][0]
    source_dtype = SAFETENSORS_DTYPES.get(stored, str(config.dtype))
    out_dtype = dtype or source_dtype
    cast = DTYPES[dtype] if dtype is not None and dtype != source_dtype else None  # same dtype: copy the files

    permutations, calibration = None, None
    if channel_selection == "calibrated":
        permutations, calibration = _calibrate(source, config, calibration_text, calibration_tokens)
    conversion = {
        "model_name": target.name,
        "source": str(source),
        "base_model": base_model or hub_id,
        "license": license or model_card.source_license(source),
        "channel_selection": channel_selection,
        "requested_parameters": {k: v for k, v in rope_id_parameters.items() if v is not None},
        "rope_parameters": dict(config.rope_parameters),
        "head_dim": head_dim_of(config),
        "dtype": out_dtype,
        "calibration": calibration,
        "permutations": permutations.tolist() if permutations is not None else None,
        "source_provenance": source_provenance(source),
        "settings": json.loads(json.dumps(settings, default=str)),
        "source_files": source_files,
    }
    text = (Path(verify_text).expanduser() if verify_text else _default_text("hamlet")) if verify else None
    with atomic_directory(target, force=force) as staging:
        say(f"writing {target} ...")
        _write_weights(files, staging, permutations, config, cast, max_shard_size)
        _write_config_and_code(staging, config, out_dtype)
        _copy_source_files(source, staging)
        set_model_max_length(staging, config.max_position_embeddings)
        conversion["files"] = file_hashes(staging, _weight_and_config_names(staging))
        write_json_atomic(staging / "conversion.json", conversion)
        verification = None
        if verify:
            from .verification import verify_checkpoint

            verification = verify_checkpoint(staging, source=source, text=text, lengths=verify_lengths, label=target)
        model_card.write_model_card(staging, conversion, verification, repo_id=repo_id)
    say(f"done: {target}")
    return target


def resolve_serving_length(serving_length: int | None, training_length: int) -> int:
    """The serving ``max_position_embeddings``: ``serving_length``, or ``SERVING_LENGTH_FACTOR`` x L."""
    if serving_length is None:
        return SERVING_LENGTH_FACTOR * int(training_length)
    if isinstance(serving_length, bool) or not isinstance(serving_length, int) or serving_length < training_length:
        raise ConversionError(
            f"serving_length must be a whole number of tokens, at least the training length {training_length}, "
            f"got {serving_length!r}."
        )
    return serving_length


def set_model_max_length(folder: Path, length: int) -> None:
    """Sets ``model_max_length`` in ``folder/tokenizer_config.json`` (if there is one) to ``length``."""
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return
    try:
        values = json.loads(path.read_text())
    except ValueError:
        return  # not ours to repair; the tokenizer loads (or fails) as the source's did
    values["model_max_length"] = int(length)
    write_json_atomic(path, values)


def _check_max_shard_size(max_shard_size: int | str | None) -> None:
    if max_shard_size is None or isinstance(max_shard_size, int) and max_shard_size > 0:
        return
    from huggingface_hub.serialization._base import parse_size_to_int

    try:
        if parse_size_to_int(str(max_shard_size)) > 0:
            return
    except ValueError:
        pass
    raise ConversionError(
        f"max_shard_size must be a size such as 2GB, 500MB or a number of bytes, got {max_shard_size!r}."
    )


def _calibrate(source: Path, config: RopeIDConfig, calibration_text, calibration_tokens: int):
    """``(permutations, record)`` of calibrated channel selection on ``calibration_text`` (default: Macbeth)."""
    from transformers import LlamaForCausalLM

    calibration_text = Path(calibration_text) if calibration_text else _default_text("macbeth")
    ids = _tokenize_file(source, calibration_text, calibration_tokens)
    say(f"calibrating channel selection on {ids.shape[-1]} tokens of {calibration_text.name} ...")
    source_model = LlamaForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    permutations = select_channels(source_model, config, "calibrated", ids)
    return permutations, {"text": calibration_text.name, "tokens": int(ids.shape[-1])}


def _write_config_and_code(staging: Path, config: RopeIDConfig, dtype: str) -> None:
    from .modeling_rope_id import AUTO_MAP

    config.__dict__.pop("_model_name_or_path", None)  # GGUF metadata carried over by the source; names nothing
    config.architectures = ["LlamaRopeIDForCausalLM"]
    config.auto_map = dict(AUTO_MAP)
    config.dtype = dtype
    config.save_pretrained(staging)
    _copy_remote_code(staging)


def _copy_source_files(source: Path, staging: Path) -> None:
    """Tokenizer, chat template, generation settings and license files, as they are."""
    for name in COPIED_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, staging / name)
    tokenizer_config = staging / "tokenizer_config.json"
    if tokenizer_config.is_file() and (staging / "tokenizer.json").is_file():
        # AutoTokenizer must not derive the class from model_type 'llama_rope_id' (which it does not know)
        try:
            values = json.loads(tokenizer_config.read_text())
        except ValueError:
            values = {"tokenizer_class": "left as it is"}
        if not values.get("tokenizer_class"):
            values["tokenizer_class"] = "PreTrainedTokenizerFast"
            tokenizer_config.write_text(json.dumps(values, indent=2) + "\n")
    for pattern in COPIED_PATTERNS:
        for path in source.glob(pattern):
            if path.is_file():
                shutil.copyfile(path, staging / path.name)


def _default_text(title: str) -> Path:
    from .assets import shakespeare_texts

    return shakespeare_texts()[title]


__all__ = [
    "CHANNEL_SELECTIONS",
    "SERVING_LENGTH_FACTOR",
    "DEFAULT_CONVERSION",
    "ConversionError",
    "auto_rotary_fraction",
    "calibrated_permutations",
    "convert_checkpoint",
    "convert_model",
    "pair_energies",
    "permute_rotary_pairs",
    "rope_id_config",
]
