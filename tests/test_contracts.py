"""Contracts transformers tooling relies on: config construction, rope types, one validator, head_dim,
and the modular classes (Llama's modules, with only attention and rotary replaced)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

import hf_ropeid.registration as registration
from hf_ropeid import LlamaRopeIDForCausalLM, LlamaRopeIDModel, RopeIDConfig, RopeIDParameterError
from hf_ropeid.modeling_rope_id import LlamaRopeIDAttention, LlamaRopeIDDecoderLayer, LlamaRopeIDRotaryEmbedding
from hf_ropeid.rope_id import RopeIDParameters, head_dim_of

from conftest import TINY, tiny_llama_config

SMALL = dict(num_hidden_layers=2, intermediate_size=64, vocab_size=300)


def test_config_constructs_from_any_sizes_and_the_model_build_checks_the_head():
    config = RopeIDConfig(hidden_size=32, **SMALL)  # default 32 heads -> head_dim 1
    assert config.head_dim == 1 and config.rope_parameters["rotary_fraction"] == 0.5
    config.to_dict()
    with pytest.raises(RopeIDParameterError, match=r"head_dim must be even \(channel i pairs with i \+ head_dim/2\), got 1"):
        LlamaRopeIDForCausalLM(config)
    # Sizes fixed later, as tools do: the model builds.
    sized = RopeIDConfig(hidden_size=32, num_attention_heads=2, **SMALL)
    assert LlamaRopeIDForCausalLM(sized).model.rotary_emb.rope_id.head_dim == 16
    # A rotary_fraction that is no whole number of pairs: accepted at construction, refused at build.
    odd = RopeIDConfig(**{**TINY, "rope_parameters": {"rope_type": "rope_id", "rotary_fraction": 0.3}})
    with pytest.raises(RopeIDParameterError, match="multiple of 1/8"):
        LlamaRopeIDForCausalLM(odd)
    # Stock configs with rope_type "rope_id" behave the same.
    stock = LlamaConfig(hidden_size=32, **SMALL, rope_parameters={"rope_type": "rope_id", "rope_theta": 1e4})
    with pytest.raises(RopeIDParameterError, match="head_dim must be even"):
        LlamaForCausalLM(stock)
    # Checks that do not depend on the head size still run at construction.
    with pytest.raises(RopeIDParameterError, match="shortest_period must be at least 2 tokens"):
        RopeIDConfig(hidden_size=32, rope_parameters={"rope_type": "rope_id", "shortest_period": 1.0})


LLAMA_ROPE_TYPES = {
    "linear": {"factor": 2.0},
    "dynamic": {"factor": 2.0},
    "yarn": {"factor": 2.0},
    "llama3": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
}


@pytest.mark.parametrize("rope_type", list(LLAMA_ROPE_TYPES))
@pytest.mark.parametrize("how", ["rope_parameters", "rope_scaling", "config_json"])
def test_other_rope_types_make_the_rope_id_classes_llama_however_they_arrive(rope_type, how):
    # RoPE-ID's classes are a superset of Llama's (issue 23): a stock rope type means exactly what it means for
    # Llama, however it reaches the config (it used to be refused).
    rope = {"rope_type": rope_type, "rope_theta": 1e4, **LLAMA_ROPE_TYPES[rope_type]}
    values = {k: v for k, v in TINY.items() if k != "rope_parameters"}
    if how == "rope_parameters":
        config = RopeIDConfig(**values, rope_parameters=rope)
    elif how == "rope_scaling":  # legacy key, as in older config.json files
        config = RopeIDConfig(**values, rope_theta=1e4, rope_scaling={"type": rope_type, **LLAMA_ROPE_TYPES[rope_type]})
    else:
        config = RopeIDConfig.from_dict({**values, "model_type": "llama_rope_id", "rope_parameters": rope})
    assert config.rope_parameters["rope_type"] == rope_type and "training_length" not in config.rope_parameters
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(**values, rope_parameters=rope)).eval()
    ours = LlamaRopeIDForCausalLM(config).eval()
    ours.load_state_dict(llama.state_dict())
    ids = torch.randint(0, 256, (1, 150))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, llama(ids).logits, atol=1e-5, rtol=1e-5)


def test_one_rope_id_validator_for_stock_and_rope_id_configs():
    ours = RopeIDConfig.__dict__["_validate_rope_id_rope_parameters"]
    assert PreTrainedConfig._validate_rope_id_rope_parameters is ours
    assert not any(name.startswith("_validate") for name in vars(registration))


def test_head_dim_of_reads_head_dim_then_falls_back_to_hidden_size_over_heads():
    assert head_dim_of(SimpleNamespace(head_dim=None, hidden_size=64, num_attention_heads=4)) == 16
    assert head_dim_of(SimpleNamespace(hidden_size=64, num_attention_heads=4)) == 16
    assert head_dim_of(SimpleNamespace(head_dim=32, hidden_size=64, num_attention_heads=4)) == 32
    # An explicit head_dim different from hidden_size // heads is what every module uses.
    config = RopeIDConfig.from_llama_config(tiny_llama_config(head_dim=32))
    model = LlamaRopeIDForCausalLM(config)
    assert RopeIDParameters.from_config(config).head_dim == 32
    assert model.model.rotary_emb.frequencies.shape == (16,)
    assert model.model.layers[0].self_attn.head_dim == 32
    assert model.model.layers[0].self_attn.q_proj.out_features == 4 * 32


def test_modular_classes_keep_llama_weights_keys_and_init():
    config = RopeIDConfig.from_llama_config(tiny_llama_config(initializer_range=0.05))
    torch.manual_seed(0)
    model = LlamaRopeIDForCausalLM(config)
    stock = LlamaForCausalLM(tiny_llama_config())
    assert list(model.state_dict()) == list(stock.state_dict())
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in stock.state_dict().items()}
    # Only attention and rotary differ; no stock copy of them is left behind.
    kinds = [type(m) for m in model.modules()]
    assert LlamaAttention not in kinds and LlamaRotaryEmbedding not in kinds
    assert kinds.count(LlamaRopeIDAttention) == kinds.count(LlamaRopeIDDecoderLayer) == 2
    assert kinds.count(LlamaRopeIDRotaryEmbedding) == 1 and type(model.model) is LlamaRopeIDModel
    # post_init initialised every weight the transformers way (initializer_range, norms at one).
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.equal(p, torch.ones_like(p)), name
        else:
            assert abs(p.std().item() - 0.05) < 0.01, (name, p.std().item())
    tied = LlamaRopeIDForCausalLM(RopeIDConfig.from_llama_config(tiny_llama_config(tie_word_embeddings=True)))
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
