"""Attention plumbing: foreign backends (vLLM/SGLang style), the rotary_window interface, compile, devices."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import repeat_kv

from hf_ropeid import LlamaRopeIDForCausalLM, LlamaRopeIDPreTrainedModel, RopeIDConfig
from hf_ropeid.modeling_rope_id import LlamaRopeIDAttention
from hf_ropeid.rope_id import RopeIDParameters, inv_freq, query_temperature
from hf_ropeid.rotary_window import ROTARY_WINDOW_ATTENTION_FUNCTIONS

from conftest import tiny_llama

L = 64
SMALL_L = {"training_length": L, "shortest_period": 8.0}
WINDOW_ERROR = r"need attn_implementation 'eager' or 'sdpa'.*would ignore the window"


def rope_id_twin(llama, attn_implementation="sdpa", **rope_id) -> LlamaRopeIDForCausalLM:
    config = RopeIDConfig.from_llama_config(llama.config, **rope_id)
    config._attn_implementation = attn_implementation
    model = LlamaRopeIDForCausalLM(config).eval()
    model.load_state_dict(llama.state_dict())
    return model


def engine_like_backend(records: list):
    """A stand-in for a serving engine's attention (vLLM's Transformers backend): it gets the rotated q/k,
    ignores attention_mask (causal by construction, as vLLM) and records what it was given."""

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        records.append((module.layer_idx, query.detach().clone(), key.detach().clone(), kwargs.get("position_ids")))
        key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling)
        return out.transpose(1, 2).contiguous(), None

    return attention


def recording_sdpa(records: list):
    def attention(module, query, key, value, attention_mask, **kwargs):
        records.append((module.layer_idx, query.detach().clone(), key.detach().clone(), kwargs.get("position_ids")))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    return attention


@pytest.fixture(params=["global_register", "instance_setitem"])
def engine_backend(request):
    """Registers the stand-in the two ways engines do: AttentionInterface.register (documented) and
    ALL_ATTENTION_FUNCTIONS[name] = fn (what vLLM's Transformers backend does)."""
    name, records = f"engine_standin_{request.param}", []
    if request.param == "global_register":
        AttentionInterface.register(name, engine_like_backend(records))
    else:
        ALL_ATTENTION_FUNCTIONS[name] = engine_like_backend(records)
    yield name, records
    AttentionInterface._global_mapping.pop(name, None)
    ALL_ATTENTION_FUNCTIONS._local_mapping.pop(name, None)


def test_foreign_backend_gets_the_sdpa_queries_and_keys_far_beyond_the_training_length(engine_backend, tmp_path, monkeypatch):
    name, engine_records = engine_backend
    llama = tiny_llama()
    rope_id_twin(llama, **SMALL_L).save_pretrained(tmp_path)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    engine = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=name).eval()
    assert engine.config._attn_implementation == name
    n = 8 * L  # far past L: temperature and every rotated pair active
    ids = torch.randint(0, 256, (1, n))
    positions = torch.arange(n)[None]  # absolute positions, as vLLM passes them

    sdpa_records = []
    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", recording_sdpa(sdpa_records))
    with torch.no_grad():
        expected = reference(ids, position_ids=positions).logits
        got = engine(ids, position_ids=positions).logits
    assert len(engine_records) == len(sdpa_records) == 2  # exactly one attention call per layer
    for (layer, q, k, pos), (ref_layer, ref_q, ref_k, ref_pos) in zip(engine_records, sdpa_records):
        assert layer == ref_layer and torch.equal(pos, ref_pos)
        assert torch.equal(q, ref_q) and torch.equal(k, ref_k)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_temperature_scales_queries_exactly_and_never_keys(engine_backend):
    name, records = engine_backend
    llama = tiny_llama()
    hot, cold = rope_id_twin(llama, name, **SMALL_L), rope_id_twin(llama, name, **SMALL_L, temperature="none")
    ids = torch.randint(0, 256, (1, 8 * L))
    with torch.no_grad():
        hot(ids)
        (_, q_hot, k_hot, _), *_ = records
        records.clear()
        cold(ids)
        (_, q_cold, k_cold, _), *_ = records
    assert torch.equal(k_hot, k_cold)  # layer 0 keys: identical inputs, so identical keys
    t = query_temperature(torch.arange(8 * L), L, "query_log", 0.1)
    assert torch.equal(q_hot[..., :L, :], q_cold[..., :L, :])  # exactly 1 inside L
    torch.testing.assert_close(q_hot, q_cold * t[:, None], rtol=1e-6, atol=1e-6)
    assert (t[L:] > 1).all()


@pytest.mark.parametrize("implementation", ["flash_attention_2", "flex_attention", "paged|eager", "engine"])
def test_rotary_window_and_far_field_refuse_implementations_that_ignore_the_window(implementation, engine_backend):
    if implementation == "engine":
        implementation = engine_backend[0]
    llama = tiny_llama()
    for window in ({"rotary_window": 32}, {"rotary_window": 32, "far_field": "log_count"}):
        config = RopeIDConfig.from_llama_config(llama.config, **window)
        with pytest.raises(ValueError, match=WINDOW_ERROR) as info:  # when the model is built or loaded
            LlamaRopeIDForCausalLM._from_config(config, attn_implementation=implementation)
        assert "\n" not in str(info.value) and repr(implementation) in str(info.value)
        model = rope_id_twin(llama, "sdpa", **window)
        with pytest.raises(ValueError, match=WINDOW_ERROR):  # when switched later
            model.set_attn_implementation(implementation)
        # Set behind transformers' back: refused at the call, never run with another kernel.
        model.config._attn_implementation = implementation
        with pytest.raises(ValueError, match=WINDOW_ERROR):
            model(torch.randint(0, 256, (1, 10)))


def test_rotary_window_uses_its_own_attention_interface():
    llama = tiny_llama()
    windowed, plain = rope_id_twin(llama, rotary_window=32), rope_id_twin(llama)
    assert all(layer.self_attn.attention_functions is ROTARY_WINDOW_ATTENTION_FUNCTIONS for layer in windowed.model.layers)
    assert all(layer.self_attn.attention_functions is ALL_ATTENTION_FUNCTIONS for layer in plain.model.layers)
    for implementation in ("eager", "sdpa"):
        windowed.set_attn_implementation(implementation)
        assert windowed.config._attn_implementation == implementation
    windowed.set_attn_implementation("sdpa")
    ids = torch.randint(0, 256, (1, 100))
    with torch.no_grad():
        sdpa = windowed(ids).logits
        windowed.set_attn_implementation("eager")
        eager = windowed(ids).logits
    torch.testing.assert_close(sdpa, eager, rtol=1e-5, atol=1e-5)


def test_pretrained_class_declares_attention_backend_support():
    assert LlamaRopeIDPreTrainedModel._supports_attention_backend is True
    assert LlamaRopeIDForCausalLM._supports_attention_backend is True
    assert LlamaRopeIDForCausalLM._supports_sdpa and LlamaRopeIDForCausalLM._supports_flex_attn


def test_fullgraph_compile_matches_eager():
    model = rope_id_twin(tiny_llama(), **SMALL_L)
    ids = torch.randint(0, 256, (1, 4 * L))
    torch._dynamo.reset()
    with torch.no_grad():
        expected = model(ids, use_cache=False).logits
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        got = compiled(ids, use_cache=False).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_frequencies_are_a_float64_buffer_that_follows_device_not_dtype():
    model = rope_id_twin(tiny_llama(), **SMALL_L)
    rotary = model.model.rotary_emb
    exact = inv_freq(RopeIDParameters.from_config(model.config))
    assert "frequencies" in dict(rotary.named_buffers())
    assert not any(key.endswith("frequencies") for key in model.state_dict())  # not in checkpoints
    model.to(torch.bfloat16)
    assert rotary.frequencies.dtype == torch.float64 and torch.equal(rotary.frequencies, exact)
    assert rotary.inv_freq.dtype == torch.bfloat16  # the float32 copies behave like stock Llama's
    model.half().float()
    assert torch.equal(rotary.frequencies, exact)
    model.to("meta")  # a device move takes the frequencies along (no lazy copy inside forward)
    assert rotary.frequencies.device.type == "meta" and rotary.frequencies.dtype == torch.float64


def test_from_pretrained_in_bfloat16_refills_the_exact_frequencies(tmp_path):
    model = rope_id_twin(tiny_llama(), **SMALL_L)
    model.save_pretrained(tmp_path)
    loaded = LlamaRopeIDForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    frequencies = loaded.model.rotary_emb.frequencies
    assert frequencies.dtype == torch.float64
    assert torch.equal(frequencies, inv_freq(RopeIDParameters.from_config(loaded.config)))
    assert all(type(layer.self_attn) is LlamaRopeIDAttention for layer in loaded.model.layers)
