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
