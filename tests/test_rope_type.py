"""The "rope_id" rope type in stock transformers models (after `import hf_ropeid`)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers import LlamaForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from conftest import TINY, tiny_llama_config
from hf_ropeid.modeling_rope_id import compute_rope_id_parameters, register_rope_type
from hf_ropeid.rope_id import RopeIDParameters, inv_freq

ROPE_ID = {"rope_type": "rope_id", "rope_theta": 10_000.0, "training_length": 128, "shortest_period": 8.0}
COMMON = {k: v for k, v in TINY.items() if k != "rope_parameters"}


def stock(kind: str):
    if kind == "llama":
        return LlamaForCausalLM(tiny_llama_config(rope_parameters=dict(ROPE_ID)))
    if kind == "mistral":
        return MistralForCausalLM(MistralConfig(**COMMON, head_dim=16, rope_parameters=dict(ROPE_ID)))
    return Qwen2ForCausalLM(Qwen2Config(**COMMON, rope_parameters=dict(ROPE_ID)))


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2"])
def test_stock_models_build_save_load_and_generate_with_rope_id(kind, tmp_path):
    torch.manual_seed(0)
    model = stock(kind).eval()
    expected = inv_freq(RopeIDParameters.from_config(model.config)).float()
    assert torch.equal(model.model.rotary_emb.inv_freq, expected)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert loaded.config.rope_parameters["rope_type"] == "rope_id"
    # from_pretrained recomputes non-persistent inv_freq through ROPE_INIT_FUNCTIONS: still ours.
    assert torch.equal(loaded.model.rotary_emb.inv_freq, expected)
    ids = torch.randint(0, 256, (1, 40))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
        out = loaded.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 45)


def test_stock_config_validation_reports_bad_rope_id_parameters():
    # transformers wraps validator errors in huggingface_hub's StrictDataclassClassValidationError;
    # our message must survive the wrapping.
    with pytest.raises(Exception, match="shortest_period must be at least 2 tokens") as info:
        tiny_llama_config(rope_parameters={**ROPE_ID, "shortest_period": 1.0})
    assert isinstance(info.value.__cause__, ValueError)


def test_registering_refuses_to_replace_a_foreign_rope_id_function():
    def foreign(config, device=None, seq_len=None, layer_type=None):
        return torch.ones(8), 1.0

    ROPE_INIT_FUNCTIONS["rope_id"] = foreign
    try:
        with pytest.raises(RuntimeError, match="already maps 'rope_id'.*not RoPE-ID's"):
            register_rope_type()
    finally:
        ROPE_INIT_FUNCTIONS["rope_id"] = compute_rope_id_parameters
    register_rope_type()  # ours (or another copy of ours) is accepted again
    assert ROPE_INIT_FUNCTIONS["rope_id"] is compute_rope_id_parameters
