"""Baselines: each variant is the expected frequency schedule on the very same weight tensors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from hf_ropeid import LlamaRopeIDForCausalLM, RopeIDConfig
from hf_ropeid.evaluation.baselines import (
    VARIANTS,
    BaselineError,
    available_variants,
    build_variant,
    training_length,
    variant_rope_parameters,
)
from hf_ropeid.rope_id import RopeIDParameters, inv_freq, original_inv_freq

from conftest import tiny_llama, tiny_llama_config

L = 128  # tiny_llama's max_position_embeddings
D = 16  # tiny_llama's head_dim
THETA = 10_000.0


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def rotary(model):
    return model.get_decoder().rotary_emb


def test_every_variant_shares_the_source_weights(model):
    source = {name: p.data_ptr() for name, p in model.named_parameters()}
    for variant in VARIANTS:
        built = build_variant(model, variant, 4 * L)
        shared = {name: p.data_ptr() for name, p in built.named_parameters()}
        assert shared == source, variant


@pytest.mark.parametrize("s", [2.0, 4.0])
def test_length_dependent_variants_give_the_expected_inv_freq(model, s):
    target = int(s * L)
    original = original_inv_freq(D, THETA).float()

    linear = rotary(build_variant(model, "linear", target))
    torch.testing.assert_close(linear.inv_freq, original / s)

    ntk = rotary(build_variant(model, "ntk", target))
    torch.testing.assert_close(ntk.inv_freq, original_inv_freq(D, THETA * s ** (D / (D - 2))).float())

    yarn = rotary(build_variant(model, "yarn", target))
    cfg = copy.deepcopy(model.config)
    cfg.rope_parameters = {"rope_type": "yarn", "rope_theta": THETA, "factor": s, "original_max_position_embeddings": L}
    expected, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](cfg)
    torch.testing.assert_close(yarn.inv_freq, expected)
    assert yarn.attention_scaling == pytest.approx(0.1 * math.log(s) + 1)


def test_dynamic_ntk_grows_its_base_with_the_input(model):
    dynamic = build_variant(model, "dynamic", 4 * L, dynamic_factor=2.0)
    torch.testing.assert_close(rotary(dynamic).inv_freq, original_inv_freq(D, THETA).float())  # inside L: RoPE
    n = 3 * L
    with torch.inference_mode():
        dynamic(torch.randint(0, 256, (1, n)))
    base = THETA * (2.0 * n / L - 1.0) ** (D / (D - 2))
    torch.testing.assert_close(rotary(dynamic).inv_freq, original_inv_freq(D, base).float())


def test_rope_id_family_spectra(model):
    p_rope = rotary(build_variant(model, "p_rope", 4 * L)).inv_freq
    torch.testing.assert_close(p_rope[: D // 4], original_inv_freq(D, THETA)[: D // 4].float())
    assert torch.all(p_rope[D // 4 :] == 0)

    expected = inv_freq(RopeIDParameters(head_dim=D, rope_theta=THETA, training_length=L)).float()
    with_temperature = build_variant(model, "rope_id", 4 * L)
    without = build_variant(model, "rope_id_no_temp", 4 * L)
    assert isinstance(with_temperature, LlamaRopeIDForCausalLM)
    assert with_temperature.config.rope_parameters["temperature"] == "query_log"
    assert without.config.rope_parameters["temperature"] == "none"
    torch.testing.assert_close(rotary(with_temperature).inv_freq, expected)
    torch.testing.assert_close(rotary(without).inv_freq, expected)


def test_rope_id_variant_equals_a_converted_checkpoint(model):
    """build_variant(..., "rope_id") is the same model as RopeIDConfig.from_llama_config + load_state_dict."""
    converted = LlamaRopeIDForCausalLM(RopeIDConfig.from_llama_config(model.config, training_length=L)).eval()
    converted.load_state_dict(model.state_dict())
    ids = torch.randint(0, 256, (1, 2 * L))
    with torch.inference_mode():
        torch.testing.assert_close(build_variant(model, "rope_id", 2 * L)(ids).logits, converted(ids).logits)


def test_variants_agree_with_rope_inside_the_training_length(model):
    ids = torch.randint(0, 256, (2, L))
    with torch.inference_mode():
        reference = model(ids).logits
        for variant in ("linear", "ntk", "yarn", "dynamic"):
            torch.testing.assert_close(build_variant(model, variant, L)(ids).logits, reference, msg=variant)


def test_temperature_only_matters_beyond_the_training_length(model):
    with_temperature = build_variant(model, "rope_id", 2 * L)
    without = build_variant(model, "rope_id_no_temp", 2 * L)
    ids = torch.randint(0, 256, (1, 2 * L))
    with torch.inference_mode():
        a, b = with_temperature(ids).logits, without(ids).logits
    torch.testing.assert_close(a[:, :L], b[:, :L])
    assert not torch.allclose(a[:, L:], b[:, L:], atol=1e-4)


def test_building_variants_leaves_the_source_model_alone(model):
    ids = torch.randint(0, 256, (1, 2 * L))
    with torch.inference_mode():
        before = model(ids).logits
        for variant in VARIANTS:
            build_variant(model, variant, 8 * L)(ids)
        after = model(ids).logits
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert model.config.rope_parameters == {"rope_type": "default", "rope_theta": THETA}


def test_rope_id_checkpoint_is_evaluated_only_as_itself():
    config = RopeIDConfig(**{k: v for k, v in tiny_llama_config().to_dict().items()
                             if k not in ("model_type", "architectures", "rope_parameters", "transformers_version")})
    checkpoint = LlamaRopeIDForCausalLM(config).eval()
    assert available_variants(config) == ("rope_id", "rope_id_no_temp")
    assert training_length(config) == L
    no_temp = build_variant(checkpoint, "rope_id_no_temp", 4 * L)
    assert no_temp.config.rope_parameters["temperature"] == "none"
    assert no_temp.config.rope_parameters["spectrum"] == config.rope_parameters["spectrum"]
    with pytest.raises(BaselineError, match="RoPE-ID checkpoint.*Available: rope_id, rope_id_no_temp"):
        build_variant(checkpoint, "yarn", 4 * L)


def test_rope_id_variant_turns_the_temperature_on_for_a_checkpoint_without_one():
    config = tiny_llama_config(rope_parameters={"rope_type": "rope_id", "rope_theta": THETA, "temperature": "none"})
    assert variant_rope_parameters(config, "rope_id", 4 * L)["temperature"] == "query_log"


def test_unknown_and_unavailable_variants_are_refused(model):
    with pytest.raises(BaselineError, match="Unknown baseline 'alibi'; accepted: rope, linear"):
        variant_rope_parameters(model.config, "alibi", 4 * L)
    scaled = tiny_llama_config(rope_parameters={"rope_type": "linear", "rope_theta": THETA, "factor": 2.0})
    with pytest.raises(BaselineError, match="already uses rope_type 'linear'"):
        variant_rope_parameters(scaled, "yarn", 4 * L)


# ----------------------------------------------------------------------------------------------
# Self-Extend and ReRoPE (two_part_rope.py)


def _reference_two_part(q_raw, k_raw, v, distance_of):
    """Scores built pair by pair: query rotated by the substitute distance against the unrotated key."""
    from hf_ropeid.evaluation.two_part_rope import _inv_freq, _rotate

    n, d = q_raw.shape[-2], q_raw.shape[-1]
    inv = _inv_freq(type("C", (), {"rope_parameters": {"rope_theta": THETA}})(), d, q_raw.device)
    scores = torch.full((n, n), float("-inf"))
    for i in range(n):
        for j in range(i + 1):
            rotated = _rotate(q_raw[None, i], torch.tensor([float(distance_of(i, j))]), inv)[0]
            scores[i, j] = rotated @ k_raw[j] / math.sqrt(d)
    return torch.softmax(scores, -1) @ v


@pytest.mark.parametrize("kind,window,group", [("rerope", 5, 1), ("self_extend", 4, 3)])
def test_two_part_kernel_matches_pairwise_substitute_distances(kind, window, group):
    """The fused kernel (rotated inputs, un-rotated inside) equals attention with each pair's substitute
    distance applied directly: ReRoPE min(t, W); Self-Extend floor(i/G) - floor(j/G) + W - floor(W/G)."""
    from hf_ropeid.evaluation.two_part_rope import _inv_freq, _rotate, two_part_rope_attention

    torch.manual_seed(0)
    n, d = 23, D
    q_raw, k_raw, v = torch.randn(n, d), torch.randn(n, d), torch.randn(n, d)

    def distance_of(i, j):
        if i - j < window:
            return i - j
        return window if kind == "rerope" else i // group - j // group + window - window // group

    expected = _reference_two_part(q_raw, k_raw, v, distance_of)
    config = type("C", (), {"rope_parameters": {"rope_theta": THETA},
                            "two_part_rope": {"kind": kind, "window": window, "group": group}})()
    module = type("M", (), {"config": config, "training": False, "num_key_value_groups": 1})()
    positions = torch.arange(n, dtype=torch.float32)
    inv = _inv_freq(config, d, q_raw.device)
    q, k = _rotate(q_raw, positions, inv), _rotate(k_raw, positions, inv)
    with torch.no_grad():
        out, _ = two_part_rope_attention(module, q[None, None], k[None, None], v[None, None], None)
    torch.testing.assert_close(out[0, :, 0], expected, atol=1e-5, rtol=1e-4)


def test_two_part_baselines_are_exact_inside_their_window_and_differ_beyond(model):
    ids = torch.randint(0, 256, (2, L))
    with torch.inference_mode():
        reference = model(ids).logits
        # Self-Extend's oracle group is 1 inside L: plain RoPE at every distance.
        torch.testing.assert_close(build_variant(model, "self_extend", L)(ids).logits, reference)
        rerope = build_variant(model, "rerope", L)(ids).logits
        # ReRoPE changes only distances >= W = L/2: the first L/2 positions are untouched.
        torch.testing.assert_close(rerope[:, : L // 2], reference[:, : L // 2])
        assert not torch.allclose(rerope[:, L // 2 + 1 :], reference[:, L // 2 + 1 :], atol=1e-4)
    assert variant_rope_parameters(model.config, "self_extend", 16 * L)["two_part_rope"] == {
        "kind": "self_extend", "window": L // 4, "group": math.ceil((16 * L - L // 4) / (L - L // 4))}


def test_two_part_baselines_are_opt_in_and_refused_for_rope_id_checkpoints(model):
    from hf_ropeid.evaluation.baselines import default_variants

    assert "rerope" in available_variants(model.config) and "rerope" not in default_variants(model.config)
    config = RopeIDConfig(**{k: v for k, v in tiny_llama_config().to_dict().items()
                             if k not in ("rope_parameters", "model_type", "architectures")})
    with pytest.raises(BaselineError, match="trained for its own spectrum"):
        variant_rope_parameters(config, "self_extend", 4 * L)
