"""Converter: in-memory equivalences, channel permutation, folder output, fresh-process verification, errors."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from hf_ropeid import LlamaRopeIDForCausalLM, RopeIDParameterError, conversion
from hf_ropeid.atomic import TargetExistsError
from hf_ropeid.conversion import (
    ConversionError,
    auto_rotary_fraction,
    calibrated_permutations,
    convert_checkpoint,
    convert_model,
    pair_energies,
    permute_rotary_pairs,
)
from hf_ropeid.rope_id import original_inv_freq
from hf_ropeid.verification import _check_tensors

from conftest import byte_tokenizer, tiny_llama

IDS = torch.randint(0, 256, (1, 96), generator=torch.Generator().manual_seed(1))
HAMLET_LIKE = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 60)


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def with_inv_freq(model: LlamaForCausalLM, frequencies: torch.Tensor) -> LlamaForCausalLM:
    """A stock Llama whose rotary module uses ``frequencies`` (float32) instead of its own."""
    rotary = model.model.rotary_emb
    rotary.inv_freq = frequencies.to(torch.float32)
    rotary.original_inv_freq = rotary.inv_freq
    return model


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


# ---------------------------------------------------------------------------------------------
# In memory
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention_bias", [False, True])
def test_identity_conversion_reproduces_the_source(attention_bias):
    # All pairs rotating with the original frequencies and no temperature is plain RoPE again.
    source = tiny_llama(attention_bias=attention_bias)
    converted = convert_model(source, spectrum="original", rotary_fraction=1.0, temperature="none")
    assert isinstance(converted, LlamaRopeIDForCausalLM)
    torch.testing.assert_close(logits(converted), logits(source), atol=1e-5, rtol=1e-5)


def test_frequency_selection_is_p_rope_with_untouched_weights():
    source = tiny_llama()
    before = {k: v.clone() for k, v in source.state_dict().items()}
    converted = convert_model(source, channel_selection="frequency", spectrum="original", rotary_fraction=0.5, temperature="none")
    for name, tensor in converted.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    p_rope = original_inv_freq(16, 10_000.0)
    p_rope[4:] = 0  # the 4 fastest of 8 pairs rotate, the rest are NoPE
    reference = with_inv_freq(tiny_llama(), p_rope)
    torch.testing.assert_close(logits(converted), logits(reference), atol=1e-5, rtol=1e-5)
    for name, tensor in source.state_dict().items():  # the source is left as it was
        assert torch.equal(tensor, before[name]), name


def test_convert_model_keeps_dtype_mode_and_generation_config():
    source = tiny_llama().to(torch.bfloat16)
    source.generation_config.max_new_tokens = 7
    converted = convert_model(source)
    assert converted.dtype == torch.bfloat16 and not converted.training
    assert converted.generation_config.max_new_tokens == 7
    assert converted.config.rope_parameters["rope_type"] == "rope_id"


def test_auto_rotary_fraction_keeps_the_pairs_that_already_turn_enough():
    # SmolLM2-135M: head_dim 64, theta 1e5, L 8192 -> 19 of 32 pairs turn at least twice (issue text).
    assert auto_rotary_fraction(64, 100_000.0, 8192, 2.0) == 19 / 32
    # Tiny model (head_dim 16, theta 1e4, L 128): period 2*pi*theta**(2j/d) must fit L/2 = 64 tokens.
    periods = [2 * math.pi * 10_000.0 ** (2 * j / 16) for j in range(8)]
    expected = sum(period <= 64 for period in periods) / 8
    assert auto_rotary_fraction(16, 10_000.0, 128, 2.0) == expected
    converted = convert_model(tiny_llama(), rotary_fraction="auto", spectrum="original")
    assert converted.config.rope_parameters["rotary_fraction"] == expected
    assert int((converted.model.rotary_emb.inv_freq > 0).sum()) == round(expected * 8)


def test_default_fraction_follows_the_spectrum():
    def tiny(**options):
        return convert_model(tiny_llama(), **options).config.rope_parameters

    periods = [2 * math.pi * 10_000.0 ** (2 * j / 16) for j in range(8)]  # L = 128
    default = tiny()
    assert default["spectrum"] == "minimal" and default["rotary_fraction"] == sum(p <= 256 for p in periods) / 8
    assert tiny(spectrum="original")["rotary_fraction"] == sum(p <= 64 for p in periods) / 8
    assert tiny(spectrum="rope_id")["rotary_fraction"] == 0.5
    assert tiny(spectrum="rope_id", rotary_fraction=0.25)["rotary_fraction"] == 0.25


def test_auto_with_a_turn_threshold():
    # "auto:T": pairs completing at least T turns inside L, i.e. period <= L / T (half a turn: period <= 2L).
    periods = [2 * math.pi * 100_000.0 ** (2 * j / 64) for j in range(32)]
    assert auto_rotary_fraction(64, 100_000.0, 8192, 0.5) == sum(p <= 2 * 8192 for p in periods) / 32
    half_turn = convert_model(tiny_llama(), rotary_fraction="auto:0.5", spectrum="minimal")
    tiny_periods = [2 * math.pi * 10_000.0 ** (2 * j / 16) for j in range(8)]
    assert half_turn.config.rope_parameters["rotary_fraction"] == sum(p <= 256 for p in tiny_periods) / 8
    # The minimal spectrum speeds the extra pairs up to the slowest allowed period, L / 2 turns = 64 tokens.
    frequencies = half_turn.model.rotary_emb.frequencies
    rotated = frequencies[frequencies > 0]
    assert (2 * math.pi / rotated).max() <= 64 * (1 + 1e-9)
    for bad in ("auto:", "auto:zero", "auto:-1", "automatic"):
        with pytest.raises(RopeIDParameterError, match="is not understood"):
            convert_model(tiny_llama(), rotary_fraction=bad)


# ---------------------------------------------------------------------------------------------
# Channel permutation
# ---------------------------------------------------------------------------------------------


def test_one_permutation_with_its_frequencies_leaves_logits_unchanged():
    # The same pair permutation in every layer and KV group, with inv_freq permuted alike, is the
    # same model: W_q/W_k rows (and q/k biases) moved, j and j + d/2 together.
    source = tiny_llama(attention_bias=True)
    config = source.config
    pi = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    permutations = pi.expand(config.num_hidden_layers, config.num_key_value_heads, 8)
    permuted = with_inv_freq(tiny_llama(attention_bias=True), original_inv_freq(16, 10_000.0)[pi])
    permuted.load_state_dict(permute_rotary_pairs(source.state_dict(), permutations, config))
    assert not torch.equal(permuted.model.layers[0].self_attn.q_proj.weight, source.model.layers[0].self_attn.q_proj.weight)
    torch.testing.assert_close(logits(permuted), logits(source), atol=1e-5, rtol=1e-5)


def _scores(attn, hidden, frequencies_per_kv):
    """Pre-softmax q.k of every head, with per-KV-group frequencies ``[kv, pairs]``."""
    b, t, _ = hidden.shape
    d = attn.head_dim
    q = attn.q_proj(hidden).view(b, t, -1, d).transpose(1, 2)
    k = attn.k_proj(hidden).view(b, t, -1, d).transpose(1, 2)
    positions = torch.arange(t, dtype=torch.float64)

    def rotate(x, frequencies):  # x [b, heads, t, d], frequencies [heads, d/2]
        angles = positions[None, :, None] * frequencies[:, None, :]
        angles = torch.cat([angles, angles], -1).to(x.dtype)
        half = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
        return x * angles.cos() + half * angles.sin()

    group = q.shape[1] // k.shape[1]
    q = rotate(q, frequencies_per_kv.repeat_interleave(group, 0))
    k = rotate(k, frequencies_per_kv).repeat_interleave(group, 1)
    return q @ k.transpose(-1, -2)


def test_per_group_permutations_keep_every_heads_attention_scores():
    source = tiny_llama(attention_bias=True)
    config = source.config
    g = torch.Generator().manual_seed(5)
    permutations = torch.stack(
        [torch.stack([torch.randperm(8, generator=g) for _ in range(config.num_key_value_heads)]) for _ in range(config.num_hidden_layers)]
    )
    permuted = tiny_llama(attention_bias=True)
    permuted.load_state_dict(permute_rotary_pairs(source.state_dict(), permutations, config))
    hidden = torch.randn(1, 40, config.hidden_size, generator=g)
    base = original_inv_freq(16, 10_000.0)
    with torch.no_grad():
        for layer in range(config.num_hidden_layers):
            reference = _scores(source.model.layers[layer].self_attn, hidden, base.expand(config.num_key_value_heads, 8))
            moved = _scores(permuted.model.layers[layer].self_attn, hidden, base[permutations[layer]])
            torch.testing.assert_close(moved, reference, atol=1e-4, rtol=1e-5)
            wrong = _scores(permuted.model.layers[layer].self_attn, hidden, base.expand(config.num_key_value_heads, 8))
            assert not torch.allclose(wrong, reference, atol=1e-3)  # the test can fail


def test_calibrated_selection_moves_the_most_energetic_pairs_first():
    source = tiny_llama()
    loud = {0: [5, 7], 1: [2, 6]}  # KV group -> pairs made 30x louder in layer 1
    with torch.no_grad():
        attn = source.model.layers[1].self_attn
        for group, pairs in loud.items():
            for pair in pairs:
                for head in (2 * group, 2 * group + 1):  # 4 query heads share 2 KV heads
                    attn.q_proj.weight[[head * 16 + pair, head * 16 + pair + 8]] *= 30
                attn.k_proj.weight[[group * 16 + pair, group * 16 + pair + 8]] *= 30
    energies = pair_energies(source, IDS)
    assert energies.shape == (2, 2, 8)
    permutations = calibrated_permutations(energies, 2)
    for group, pairs in loud.items():
        assert permutations[1, group, :2].tolist() == pairs  # chosen, in original (fastest-first) order
        rest = [p for p in range(8) if p not in pairs]
        assert permutations[1, group, 2:].tolist() == rest
    converted = convert_model(
        source, channel_selection="calibrated", calibration_input_ids=IDS, spectrum="original", rotary_fraction=0.25
    )
    k_old, k_new = source.model.layers[1].self_attn.k_proj.weight, converted.model.layers[1].self_attn.k_proj.weight
    for group, pairs in loud.items():
        for new_index, pair in enumerate(pairs):
            assert torch.equal(k_new[group * 16 + new_index], k_old[group * 16 + pair])
            assert torch.equal(k_new[group * 16 + new_index + 8], k_old[group * 16 + pair + 8])


def test_calibrated_without_text_and_unknown_selection_are_errors():
    with pytest.raises(ConversionError, match="calibration_input_ids"):
        convert_model(tiny_llama(), channel_selection="calibrated")
    with pytest.raises(ConversionError, match="frequency, calibrated"):
        convert_model(tiny_llama(), channel_selection="random")


def test_convert_model_refuses_other_models():
    rope_id_model = convert_model(tiny_llama())
    with pytest.raises(ConversionError, match="already a RoPE-ID"):
        convert_model(rope_id_model)
    with pytest.raises(ConversionError, match="Expected a LlamaForCausalLM"):
        convert_model(tiny_llama().model)


# ---------------------------------------------------------------------------------------------
# Folder to folder
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [{}, {"attention_bias": True, "mlp_bias": True}, {"tie_word_embeddings": True, "num_key_value_heads": 1}, {"head_dim": 8}],
)
def test_expected_shapes_match_transformers_llama(overrides):
    # The converter's fast shape check must agree with the model transformers builds.
    from conftest import tiny_llama_config

    config = tiny_llama_config(**overrides)
    with conversion.empty_weights():
        real = {k: tuple(v.shape) for k, v in LlamaForCausalLM(config).state_dict().items()}
    assert conversion.expected_shapes(config) == real


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "sample.txt"
    path.write_text(HAMLET_LIKE)
    return path


def test_convert_checkpoint_writes_a_complete_verified_folder(tiny_llama_dir, tmp_path, text_file):
    # The one test that spawns the fresh-process verification (package hidden, own modules cache).
    source_files = folder_digest(tiny_llama_dir)
    target = tmp_path / "out" / "tiny-rope-id"
    convert_checkpoint(tiny_llama_dir, target, verify_text=text_file, verify_lengths=(32, 64, 128), license="mit")
    assert folder_digest(tiny_llama_dir) == source_files
    names = {p.name for p in target.iterdir()}
    expected = {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "configuration_rope_id.py", "modeling_rope_id.py", "rope_id.py", "README.md", "conversion.json", "verification.json"}
    assert expected <= names
    assert not leftovers(target.parent)
    # Weights untouched by the default (frequency) strategy: copied byte for byte.
    assert (target / "model.safetensors").read_bytes() == (tiny_llama_dir / "model.safetensors").read_bytes()
    config = json.loads((target / "config.json").read_text())
    assert config["model_type"] == "llama_rope_id" and config["architectures"] == ["LlamaRopeIDForCausalLM"]
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    assert config["rope_parameters"]["training_length"] == 128
    report = json.loads((target / "verification.json").read_text())
    assert report["problems"] == []
    assert report["model_class"].startswith("transformers_modules.")
    assert report["tensors_checked"] == len(load_file(target / "model.safetensors"))
    for which in ("source", "converted"):
        assert set(report["perplexity"][which]) == {"32", "64", "128"}
        assert all(math.isfinite(r["perplexity"]) for r in report["perplexity"][which].values())
    card = (target / "README.md").read_text()
    assert "trust_remote_code=True" in card and "| 32 |" in card and "license: mit" in card
    # In this process (package imported) the folder loads as the same model convert_model builds.
    loaded = AutoModelForCausalLM.from_pretrained(target)
    source = LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    torch.testing.assert_close(logits(loaded), logits(convert_model(source)))


def test_dtype_and_sharding_rewrite_the_weights(tiny_llama_dir, tmp_path):
    target = tmp_path / "bf16"
    convert_checkpoint(tiny_llama_dir, target, dtype="bfloat16", max_shard_size="100KB", verify=False)
    shards = sorted(target.glob("model-*.safetensors"))
    assert len(shards) > 1 and (target / "model.safetensors.index.json").is_file()
    tensors = {}
    for shard in shards:
        tensors.update(load_file(shard))
    source = load_file(tiny_llama_dir / "model.safetensors")
    assert set(tensors) == set(source)
    for name, tensor in tensors.items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, source[name].to(torch.bfloat16)), name
    assert json.loads((target / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = AutoModelForCausalLM.from_pretrained(target, dtype="auto")
    assert loaded.dtype == torch.bfloat16
    same = convert_checkpoint(tiny_llama_dir, tmp_path / "same", dtype="float32", verify=False)  # already float32
    assert (same / "model.safetensors").read_bytes() == (tiny_llama_dir / "model.safetensors").read_bytes()


def test_calibrated_folder_conversion_matches_in_memory(tiny_llama_dir, tmp_path, text_file):
    target = tmp_path / "calibrated"
    convert_checkpoint(
        tiny_llama_dir, target, channel_selection="calibrated", calibration_text=text_file, calibration_tokens=200,
        spectrum="rope_id", rotary_fraction=0.5, verify=False,
    )
    record = json.loads((target / "conversion.json").read_text())
    assert record["calibration"] == {"text": "sample.txt", "tokens": 200}
    assert torch.tensor(record["permutations"]).shape == (2, 2, 8)
    ids = torch.tensor([byte_tokenizer()(HAMLET_LIKE, add_special_tokens=False)["input_ids"][:200]])
    source = LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    expected = convert_model(source, channel_selection="calibrated", calibration_input_ids=ids, spectrum="rope_id", rotary_fraction=0.5)
    loaded = AutoModelForCausalLM.from_pretrained(target)
    torch.testing.assert_close(logits(loaded), logits(expected))


def test_force_replaces_and_refusal_keeps_an_existing_target(tiny_llama_dir, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(TargetExistsError, match="not empty; pass --force"):
        convert_checkpoint(tiny_llama_dir, target, verify=False)
    assert (target / "keep.txt").read_text() == "mine"
    convert_checkpoint(tiny_llama_dir, target, verify=False, force=True)
    assert not (target / "keep.txt").exists() and (target / "config.json").is_file()
    assert not leftovers(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    convert_checkpoint(tiny_llama_dir, empty, verify=False)  # an empty folder is not "existing output"
    assert (empty / "config.json").is_file()


@pytest.mark.parametrize("exception", [KeyboardInterrupt, RuntimeError])
@pytest.mark.parametrize("existing", [False, True])
def test_a_crash_leaves_no_partial_target(tiny_llama_dir, tmp_path, monkeypatch, exception, existing):
    target = tmp_path / "out"
    if existing:
        target.mkdir()
        (target / "old.txt").write_text("previous conversion")

    def crash(*args, **kwargs):
        raise exception("simulated crash while writing")

    monkeypatch.setattr(conversion, "_copy_remote_code", crash)
    with pytest.raises(exception):
        convert_checkpoint(tiny_llama_dir, target, verify=False, force=True)
    if existing:
        assert [p.name for p in target.iterdir()] == ["old.txt"]
    else:
        assert not target.exists()
    assert not leftovers(tmp_path)


def test_failed_verification_leaves_no_target(tiny_llama_dir, tmp_path, monkeypatch, text_file):
    from hf_ropeid import verification

    def failing(folder, **kwargs):
        raise verification.VerificationError(f"{folder} failed verification:\n- simulated problem")

    monkeypatch.setattr(verification, "verify_checkpoint", failing)
    with pytest.raises(verification.VerificationError, match="simulated problem"):
        convert_checkpoint(tiny_llama_dir, tmp_path / "out", verify_text=text_file)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------
# Errors: each names what was wrong and leaves nothing behind
# ---------------------------------------------------------------------------------------------


def _edit_config(folder: Path, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _truncate(folder: Path):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


def _corrupt_header(folder: Path):
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[12:20] = b"\xff" * 8
    path.write_bytes(bytes(data))


def _bin_only(folder: Path):
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")


def _shard_missing(folder: Path):
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}))
    (folder / "model.safetensors").unlink()


def _llama3_rope(folder: Path):
    _edit_config(folder, rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64})


SOURCE_ERRORS = {
    "missing config": (lambda f: (f / "config.json").unlink(), "No config.json"),
    "invalid config": (lambda f: (f / "config.json").write_text("{not json"), "not valid JSON"),
    "missing weights": (lambda f: (f / "model.safetensors").unlink(), "No weights"),
    "bin weights": (_bin_only, "only PyTorch .bin weights"),
    "missing shard": (_shard_missing, "missing from"),
    "truncated safetensors": (_truncate, "truncated or corrupted"),
    "corrupted safetensors": (_corrupt_header, "truncated or corrupted"),
    "shape mismatch": (lambda f: _edit_config(f, intermediate_size=96), "shape mismatch: .*mlp"),
    "unsupported architecture": (
        lambda f: _edit_config(f, model_type="qwen2", architectures=["Qwen2ForCausalLM"]),
        "Unsupported architecture: Qwen2ForCausalLM. Supported: LlamaForCausalLM",
    ),
    "odd head_dim": (lambda f: _edit_config(f, head_dim=15), "head_dim is 15, an odd number"),
    "rescaled rope": (_llama3_rope, "rope_type 'llama3'"),
}


@pytest.mark.parametrize("case", list(SOURCE_ERRORS))
def test_bad_sources_are_clear_errors(tiny_llama_dir, tmp_path, case):
    break_it, message = SOURCE_ERRORS[case]
    break_it(tiny_llama_dir)
    before = folder_digest(tiny_llama_dir)
    target = tmp_path / "out"
    with pytest.raises(ConversionError, match=message):
        convert_checkpoint(tiny_llama_dir, target, verify=False)
    assert not target.exists() and not leftovers(tmp_path)
    assert folder_digest(tiny_llama_dir) == before


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"rotary_fraction": 1.5}, RopeIDParameterError, "rotary_fraction must be in"),
        ({"rotary_fraction": 0.3}, RopeIDParameterError, "multiple of 1/8"),
        ({"spectrum": "rope_id", "shortest_period": 100}, RopeIDParameterError, "shortest_period"),
        ({"training_length": -5}, RopeIDParameterError, "training_length"),
        ({"spectrum": "cosine"}, RopeIDParameterError, "Unknown spectrum"),
        ({"window": 3}, RopeIDParameterError, "Unknown RoPE-ID parameter"),
        ({"dtype": "int8"}, ConversionError, "Unknown dtype 'int8'"),
        ({"channel_selection": "random"}, ConversionError, "Unknown channel_selection"),
    ],
)
def test_out_of_range_options_are_clear_errors(tiny_llama_dir, tmp_path, options, error, message):
    target = tmp_path / "out"
    with pytest.raises(error, match=message):
        convert_checkpoint(tiny_llama_dir, target, verify=False, **options)
    assert not target.exists() and not leftovers(tmp_path)


def test_overlapping_or_missing_sources_and_targets_are_refused(tiny_llama_dir, tmp_path):
    with pytest.raises(ConversionError, match="overlaps the source"):
        convert_checkpoint(tiny_llama_dir, tiny_llama_dir / "inside", verify=False)
    with pytest.raises(ConversionError, match="overlaps the source"):
        convert_checkpoint(tiny_llama_dir, tiny_llama_dir, verify=False, force=True)
    with pytest.raises(ConversionError, match="is not a folder"):
        convert_checkpoint(tmp_path / "nowhere", tmp_path / "out", verify=False)
    # A Hub id with HF_HUB_OFFLINE=1 (set for all tests) fails without any network access.
    with pytest.raises(ConversionError, match="downloading it from the Hub failed"):
        convert_checkpoint("some-org/some-model", tmp_path / "out", verify=False)
    converted = convert_checkpoint(tiny_llama_dir, tmp_path / "once", verify=False)
    with pytest.raises(ConversionError, match="already a RoPE-ID checkpoint"):
        convert_checkpoint(converted, tmp_path / "twice", verify=False)


def test_tensor_check_finds_nan_and_missing_weights(tiny_llama_dir, tmp_path):
    # The fresh-process verification's tensor check, run here on a damaged copy.
    from safetensors.torch import save_file

    folder = tmp_path / "damaged"
    shutil.copytree(tiny_llama_dir, folder)
    tensors = load_file(folder / "model.safetensors")
    model = LlamaForCausalLM.from_pretrained(folder)
    assert _check_tensors(model, folder) == ([], len(tensors))
    tensors["model.norm.weight"][3] = float("nan")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, folder / "model.safetensors")
    problems, _ = _check_tensors(model, folder)
    joined = "\n".join(problems)
    assert "model.norm.weight: contains NaN" in joined
    assert "model.layers.1.mlp.up_proj.weight: in the model but in no safetensors file" in joined
    tensors = load_file(tiny_llama_dir / "model.safetensors")
    tensors["model.norm.weight"] += 1
    save_file(tensors, folder / "model.safetensors")
    problems, _ = _check_tensors(model, folder)
    assert problems == ["model.norm.weight: loaded values differ from the file"]


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def test_convert_command_options_old_spellings_and_exit_2_errors(tiny_llama_dir, tmp_path):
    from typer.testing import CliRunner

    from hf_ropeid.cli import app

    runner = CliRunner()
    target = tmp_path / "cli-out"
    args = ["convert", str(tiny_llama_dir), str(target), "--no-verify", "--spectrum", "rope_id", "--rotary-fraction", "0.5",
            "--training-length", "96"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rope = json.loads((target / "config.json").read_text())["rope_parameters"]
    assert (rope["spectrum"], rope["rotary_fraction"], rope["training_length"]) == ("rope_id", 0.5, 96)
    again = runner.invoke(app, args)  # the same conversion again: recognised, nothing rewritten
    assert again.exit_code == 0 and "already converted: " in again.output
    other = runner.invoke(app, [*args[:-1], "112"])  # other settings: the target is not replaced without --force
    assert other.exit_code == 2 and "error: " in other.output and "not empty; pass --force" in other.output
    assert "Traceback" not in other.output
    old_spelling = runner.invoke(app, [*args[:-2], "--train-length", "96", "--turns", "2.5", "--force"])  # hidden aliases
    assert old_spelling.exit_code == 0, old_spelling.output
    rope = json.loads((target / "config.json").read_text())["rope_parameters"]
    assert (rope["training_length"], rope["turns_per_training_length"]) == (96, 2.5)
    bad = runner.invoke(app, ["convert", str(tiny_llama_dir), str(tmp_path / "x"), "--rotary-fraction", "half"])
    assert bad.exit_code == 2 and "is not understood" in bad.output
    out_of_range = runner.invoke(app, ["convert", str(tiny_llama_dir), str(tmp_path / "y"), "--no-verify", "--rotary-fraction", "2"])
    assert out_of_range.exit_code == 2 and "rotary_fraction must be in (0, 1]" in out_of_range.output
    assert not (tmp_path / "y").exists()


@pytest.mark.slow
def test_default_cli_converts_smollm2(tmp_path, monkeypatch):
    # The README's main command: no MODEL argument converts SmolLM2-135M-Instruct into ./outputs, verified.
    from typer.testing import CliRunner

    from hf_ropeid.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["convert", "--verify-lengths", "256,1024"])
    assert result.exit_code == 0, result.output
    target = tmp_path / "outputs" / "SmolLM2-135M-Instruct-rope-id"
    report = json.loads((target / "verification.json").read_text())
    assert report["problems"] == [] and report["tensors_checked"] == 272
    rope = report["rope_parameters"]  # the measured default, the far-context recipe at SmolLM2's L = 8192
    assert (rope["spectrum"], rope["rotary_fraction"], rope["rotary_window"]) == ("original", 0.5, 4096)
    card = (target / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "license: apache-2.0" in card


def test_serving_length_is_16_l_for_engines_and_changes_nothing_the_model_computes(tiny_llama_dir, tmp_path):
    L = 64
    served = convert_checkpoint(tiny_llama_dir, tmp_path / "served", verify=False, training_length=L, shortest_period=8.0)
    config = json.loads((served / "config.json").read_text())
    assert config["max_position_embeddings"] == 16 * L == conversion.SERVING_LENGTH_FACTOR * L
    assert config["rope_parameters"]["training_length"] == L
    assert json.loads((served / "tokenizer_config.json").read_text())["model_max_length"] == 16 * L
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(served, trust_remote_code=True).model_max_length == 16 * L
    capped = convert_checkpoint(tiny_llama_dir, tmp_path / "capped", verify=False, training_length=L, serving_length=L,
                               shortest_period=8.0)
    assert json.loads((capped / "config.json").read_text())["max_position_embeddings"] == L  # as before
    ids = IDS[:, :48]  # inside L
    a = AutoModelForCausalLM.from_pretrained(served, dtype=torch.float32).eval()
    b = AutoModelForCausalLM.from_pretrained(capped, dtype=torch.float32).eval()
    torch.testing.assert_close(logits(a, ids), logits(b, ids), rtol=0, atol=0)
    torch.testing.assert_close(logits(a, IDS), logits(b, IDS), rtol=0, atol=0)  # and past L (96 > 64)
    with pytest.raises(ConversionError, match="at least the training length 64"):
        convert_checkpoint(tiny_llama_dir, tmp_path / "short", verify=False, training_length=L, serving_length=32,
                           shortest_period=8.0)


def test_far_context_recipe_fills_the_unset_parameters_and_explicit_options_win():
    config = tiny_llama().config  # L = 128
    recipe = conversion.rope_id_config(config, recipe="far-context").rope_parameters
    assert recipe["spectrum"] == "original" and recipe["rotary_fraction"] == 0.5
    assert recipe["rotary_window"] == 64 and recipe["temperature"] == "length_log"
    assert recipe["temperature_channels"] == "all" and recipe["local_layers"] == [0]
    every_layer_global = conversion.rope_id_config(config, recipe="far-context", local_layers="").rope_parameters
    assert every_layer_global["local_layers"] == [] and every_layer_global["rotary_window"] == 64
    overridden = conversion.rope_id_config(config, recipe="far-context", rotary_window=32, training_length=256)
    assert overridden.rope_parameters["rotary_window"] == 32 and overridden.rope_parameters["training_length"] == 256
    assert conversion.rope_id_config(config, recipe="far-context", training_length=256).rope_parameters[
        "rotary_window"] == 128  # L/2 of the L given
    plain = conversion.rope_id_config(config).rope_parameters  # the Python function applies no recipe unasked
    assert plain.get("rotary_window") is None and plain["spectrum"] == "minimal"
    assert conversion.rope_id_config(config, recipe="portable").rope_parameters == plain
    paper = conversion.rope_id_config(config, recipe="paper").rope_parameters
    assert (paper["spectrum"], paper["rotary_fraction"], paper.get("rotary_window")) == ("rope_id", 0.5, None)
    with pytest.raises(RopeIDParameterError, match="Unknown recipe 'long'; accepted: far-context, portable, paper"):
        conversion.rope_id_config(config, recipe="long")


def test_commands_convert_with_the_far_context_recipe_unless_told_otherwise(tiny_llama_dir, tmp_path):
    """The measured default of `convert` and `finetune` (RESULTS §10-11); `--recipe portable` for every kernel."""
    from typer.testing import CliRunner

    from hf_ropeid.cli import app
    from hf_ropeid.training import ConversionArguments, load_base_model

    runner = CliRunner()
    default, portable = tmp_path / "default", tmp_path / "portable"
    assert runner.invoke(app, ["convert", str(tiny_llama_dir), str(default), "--no-verify"]).exit_code == 0
    rope = json.loads((default / "config.json").read_text())["rope_parameters"]
    assert (rope["spectrum"], rope["rotary_fraction"], rope["rotary_window"]) == ("original", 0.5, 64)  # L = 128
    assert (rope["temperature"], rope["temperature_channels"], rope["local_layers"]) == ("length_log", "all", [0])
    global_only = runner.invoke(app, ["convert", str(tiny_llama_dir), str(tmp_path / "g"), "--no-verify",
                                      "--local-layers", ""])  # every layer global again
    assert json.loads((tmp_path / "g" / "config.json").read_text())["rope_parameters"]["local_layers"] == [], (
        global_only.output)
    explicit = runner.invoke(app, ["convert", str(tiny_llama_dir), str(tmp_path / "w"), "--no-verify",
                                   "--rotary-window", "32"])  # an option given wins over the recipe's value
    assert json.loads((tmp_path / "w" / "config.json").read_text())["rope_parameters"]["rotary_window"] == 32, explicit.output
    assert runner.invoke(app, ["convert", str(tiny_llama_dir), str(portable), "--no-verify", "--recipe",
                               "portable"]).exit_code == 0
    rope = json.loads((portable / "config.json").read_text())["rope_parameters"]
    assert rope.get("rotary_window") is None and rope["spectrum"] == "minimal" and rope["temperature"] == "query_log"
    model, converted = load_base_model(ConversionArguments(model=str(tiny_llama_dir)))  # finetune's conversion
    assert converted and model.config.rope_parameters["rotary_window"] == 64
    pytest.importorskip("gguf")
    refused = runner.invoke(app, ["export-gguf", str(default), str(tmp_path / "d.gguf")])
    assert refused.exit_code == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "--recipe portable" in refused.stderr and not (tmp_path / "d.gguf").exists()
    exported = runner.invoke(app, ["export-gguf", str(portable), str(tmp_path / "p.gguf")])
    assert exported.exit_code == 0, exported.output
