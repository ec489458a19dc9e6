"""RopeIDConfig and LlamaRopeIDForCausalLM: equivalence, temperature, caches, kernels, precision."""

import math

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    StaticCache,
)

from conftest import TINY, tiny_llama, tiny_llama_config
from hf_ropeid import LlamaRopeIDForCausalLM, LlamaRopeIDModel, RopeIDConfig, RopeIDParameterError
from hf_ropeid.modeling_rope_id import LlamaRopeIDRotaryEmbedding
from hf_ropeid.rope_id import inv_freq, RopeIDParameters

# A tiny RoPE-ID geometry that works at L = 64 (periods 8..32), so 16x L is only 1024 tokens.
SMALL_L = {"training_length": 64, "shortest_period": 8.0}


def rope_id_twin(llama: LlamaForCausalLM, attn_implementation="sdpa", **rope_id) -> LlamaRopeIDForCausalLM:
    """A LlamaRopeIDForCausalLM carrying exactly the Llama's weights."""
    config = RopeIDConfig.from_llama_config(llama.config, **rope_id)
    config._attn_implementation = attn_implementation
    model = LlamaRopeIDForCausalLM(config).eval()
    model.load_state_dict(llama.state_dict())
    return model


def test_full_rotation_original_spectrum_no_temperature_equals_stock_llama():
    llama = tiny_llama()
    twin = rope_id_twin(llama, rotary_fraction=1.0, spectrum="original", temperature="none")
    ids = torch.randint(0, 256, (2, 100))
    with torch.no_grad():
        expected, got = llama(ids).logits, twin(ids).logits
    # Stock Llama forms angles in float32; RoPE-ID in float64 -> agreement to float32 rounding.
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)


def test_rope_id_changes_logits_versus_stock_llama():
    llama = tiny_llama()
    twin = rope_id_twin(llama)
    ids = torch.randint(0, 256, (1, 64))
    with torch.no_grad():
        assert (twin(ids).logits - llama(ids).logits).abs().max() > 1e-3


def test_config_defaults_are_written_out_and_checked():
    config = RopeIDConfig.from_llama_config(tiny_llama_config(max_position_embeddings=2048))
    assert config.model_type == "llama_rope_id"
    rp = config.rope_parameters
    assert rp["rope_type"] == "rope_id" and rp["training_length"] == 2048 and rp["rope_theta"] == 10_000.0
    assert rp["rotary_fraction"] == 0.5 and rp["shortest_period"] == 32 and rp["temperature"] == "query_log"
    with pytest.raises(RopeIDParameterError, match="multiple of 1/8"):
        RopeIDConfig.from_llama_config(tiny_llama_config(), rotary_fraction=0.3)
    # Raising max_position_embeddings later never moves the training length.
    config.max_position_embeddings = 65536
    assert RopeIDParameters.from_config(config).training_length == 2048


@pytest.mark.parametrize("rope", [
    {"rope_type": "default", "rope_theta": 1e4},
    {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4},
    {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 1e4},
    {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 32, "rope_theta": 1e4},
])
def test_a_stock_rope_type_makes_the_rope_id_classes_exactly_llama(rope):
    # The RoPE-ID classes are a superset of Llama: a stock rope type means what it means for Llama, and RoPE-ID's
    # keys left over in the dict (as transformers' own tests leave them) are neither read nor checked.
    config = RopeIDConfig(**{**TINY, "rope_parameters": {**rope, "training_length": 8, "rotary_window": 4}})
    assert config.rope_parameters["rope_type"] == rope["rope_type"]
    llama = LlamaForCausalLM(tiny_llama_config(rope_parameters=dict(rope))).eval()
    twin = LlamaRopeIDForCausalLM(config).eval()
    twin.load_state_dict(llama.state_dict())
    twin.set_attn_implementation("eager")
    ids = torch.randint(0, 256, (2, 200))  # past max_position_embeddings (128): dynamic scaling acts
    with torch.no_grad():
        llama.set_attn_implementation("eager")
        torch.testing.assert_close(twin(ids).logits, llama(ids).logits, atol=1e-5, rtol=1e-5)


def test_temperature_is_exactly_one_inside_training_length_and_acts_beyond():
    llama = tiny_llama()
    hot = rope_id_twin(llama, **SMALL_L)
    cold = rope_id_twin(llama, **SMALL_L, temperature="none")
    ids = torch.randint(0, 256, (1, 256))
    with torch.no_grad():
        a, b = hot(ids).logits, cold(ids).logits
    assert torch.equal(a[:, :64], b[:, :64])
    assert (a[:, 64:] - b[:, 64:]).abs().amax(dim=-1).min() > 0


def test_temperature_multiplies_queries_only():
    """Layer 0 sees identical inputs with and without temperature, so for the query at 1-based
    position p its attention row must be softmax(t(p) * logits): keys (any position) unscaled."""
    llama = tiny_llama()
    hot = rope_id_twin(llama, attn_implementation="eager", **SMALL_L)
    cold = rope_id_twin(llama, attn_implementation="eager", **SMALL_L, temperature="none")
    ids = torch.randint(0, 256, (1, 200))
    with torch.no_grad():
        w_hot = hot(ids, output_attentions=True).attentions[0][0].double()
        w_cold = cold(ids, output_attentions=True).attentions[0][0].double()
    p = torch.arange(1, 201, dtype=torch.float64)
    t = (1 + 0.1 * torch.log(torch.clamp(p, min=64) / 64)) ** 2
    causal = torch.ones(200, 200).tril().bool()
    log_cold = torch.where(causal, w_cold.clamp_min(1e-300).log(), torch.tensor(float("-inf"), dtype=torch.float64))
    predicted = torch.softmax(t[None, :, None] * log_cold, dim=-1)
    torch.testing.assert_close(w_hot, predicted, rtol=1e-3, atol=1e-5)
    assert (w_hot[:, 150] - w_cold[:, 150]).abs().max() > 1e-3  # the temperature did something


def test_rotary_module_returns_cos_sin_like_every_transformers_rotary_module():
    model = rope_id_twin(tiny_llama(), **SMALL_L)
    x = torch.zeros(1, 200, 64)
    position_ids = torch.arange(200)[None]
    cos, sin = model.model.rotary_emb(x, position_ids)
    assert cos.shape == sin.shape == (1, 200, 16) and cos.dtype == torch.float32
    angles = position_ids[..., None].double() * inv_freq(RopeIDParameters.from_config(model.config))
    angles = torch.cat((angles, angles), dim=-1)
    torch.testing.assert_close(cos, angles.cos().float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, angles.sin().float(), rtol=0, atol=1e-6)
    assert torch.all(cos[..., 7] == 1) and torch.all(sin[..., 7] == 0)  # unrotated pair: no temperature here


@pytest.mark.parametrize("temperature", ["query_log", "length_log", "floor_log", "none"])
def test_incremental_decoding_matches_full_forward_far_beyond_training_length(temperature):
    model = rope_id_twin(tiny_llama(), **SMALL_L, temperature=temperature)
    ids = torch.randint(0, 256, (1, 16 * 64))  # 16x L
    with torch.no_grad():
        full = model(ids).logits
        prefix = 16 * 64 - 6
        out = model(ids[:, :prefix], use_cache=True)
        cache = out.cache
        steps = [out.logits[:, -1]]
        for t in range(prefix, ids.shape[1] - 1):
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = out.cache
            steps.append(out.logits[:, -1])
    assert isinstance(cache, DynamicCache)
    torch.testing.assert_close(torch.stack(steps, 1), full[:, prefix - 1 : -1], rtol=1e-4, atol=1e-4)


def test_static_cache_and_generate_match_uncached_greedy_beyond_training_length():
    model = rope_id_twin(tiny_llama(), **SMALL_L)
    prompt = torch.randint(0, 256, (1, 300))  # already past L = 64
    with torch.no_grad():
        no_cache = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
        dynamic = model.generate(prompt, max_new_tokens=8, do_sample=False)
        static = model.generate(prompt, max_new_tokens=8, do_sample=False, cache_implementation="static")
    assert torch.equal(dynamic, no_cache) and torch.equal(static, no_cache)
    # StaticCache by hand: prefill then one step equals the full forward.
    cache = StaticCache(config=model.config, max_cache_len=400)
    with torch.no_grad():
        model(prompt, cache=cache, use_cache=True)
        nxt = no_cache[:, 300:301]
        step = model(nxt, cache=cache, use_cache=True).logits[:, -1]
        full = model(torch.cat([prompt, nxt], 1)).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-4)


def test_attention_implementations_agree():
    llama = tiny_llama()
    ids = torch.randint(0, 256, (2, 300))
    mask = torch.ones_like(ids)
    mask[1, :20] = 0  # left padding in the second row
    results = {}
    impls = ["eager", "sdpa", "flex_attention"]
    try:
        import flash_attn  # noqa: F401

        if torch.cuda.is_available():
            impls.append("flash_attention_2")
    except ImportError:
        pass
    for impl in impls:
        model = rope_id_twin(llama, attn_implementation=impl, **SMALL_L)
        model.config._attn_implementation = impl
        with torch.no_grad():
            results[impl] = model(ids, attention_mask=mask).logits
    for impl in impls[1:]:
        torch.testing.assert_close(results[impl][0], results["eager"][0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(results[impl][1, 20:], results["eager"][1, 20:], rtol=1e-4, atol=1e-4)


def test_phases_at_a_million_are_as_precise_as_at_a_thousand():
    """q.k after rotation depends only on the offset: check it far out against near the origin."""
    config = RopeIDConfig.from_llama_config(tiny_llama_config(), training_length=4096)
    rotary = LlamaRopeIDRotaryEmbedding(config)
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    def logit(pq, pk):
        pos = torch.tensor([[pq, pk]])
        cos, sin = rotary(q, pos)
        rq, _ = apply_rotary_pos_emb(q, q, cos[:, :1], sin[:, :1])
        rk, _ = apply_rotary_pos_emb(k, k, cos[:, 1:], sin[:, 1:])
        return (rq * rk).sum().item()

    offsets = [0, 1, 7, 33, 517, 2000]
    near = [logit(1000 + o, 1000) for o in offsets]
    far = [logit(1_000_000 + o, 1_000_000) for o in offsets]
    farther = [logit(123_456_789 + o, 123_456_789) for o in offsets]
    assert far == pytest.approx(near, abs=2e-5)
    assert farther == pytest.approx(near, abs=2e-5)
    # Stock float32 angles drift visibly at the same positions: the check above has teeth.
    llama_rotary = LlamaForCausalLM(tiny_llama_config(rope_parameters={"rope_type": "rope_id", "training_length": 4096, "rope_theta": 1e4})).model.rotary_emb
    cos32, sin32 = llama_rotary(q, torch.tensor([[123_456_789 + 33]]))
    cos64, sin64 = rotary(q, torch.tensor([[123_456_789 + 33]]))
    assert (cos32 - cos64).abs().max() > 1e-3


def test_model_dtype_cast_keeps_float64_frequencies():
    model = rope_id_twin(tiny_llama()).to(torch.bfloat16)
    rotary = model.model.rotary_emb
    assert rotary.frequencies.dtype == torch.float64
    assert torch.equal(rotary.frequencies, inv_freq(RopeIDParameters.from_config(model.config)))
    out = model(torch.randint(0, 256, (1, 40))).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_activation_checkpointing_gives_the_same_gradients():
    llama = tiny_llama()
    ids = torch.randint(0, 256, (2, 150))
    grads = []
    for checkpointing in (False, True):
        model = rope_id_twin(llama, **SMALL_L).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert model.model.gradient_checkpointing or any(
                getattr(layer, "gradient_checkpointing", False) for layer in model.model.layers
            )
        model(ids, labels=ids).loss.backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def test_torch_compile_matches_eager():
    model = rope_id_twin(tiny_llama(), **SMALL_L)
    ids = torch.randint(0, 256, (1, 200))
    with torch.no_grad():
        expected = model(ids).logits
        compiled = torch.compile(model, backend="aot_eager", fullgraph=False)
        got = compiled(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_auto_classes_resolve_in_process(tmp_path):
    model = rope_id_twin(tiny_llama())
    model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is RopeIDConfig
    assert type(AutoModel.from_pretrained(tmp_path)) is LlamaRopeIDModel
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is LlamaRopeIDForCausalLM
    # The float32 inv_freq buffers (read by external tools) are filled in, not left uninitialised.
    expected = inv_freq(RopeIDParameters.from_config(loaded.config)).float()
    assert torch.equal(loaded.model.rotary_emb.inv_freq, expected)
    assert torch.equal(loaded.model.rotary_emb.original_inv_freq, expected)
    ids = torch.randint(0, 256, (1, 90))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
