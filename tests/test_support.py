"""Every support claim (hf_ropeid/support.py, shown in the README) against what the code does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformers import AttentionInterface

from hf_ropeid import LlamaRopeIDForCausalLM, RopeIDConfig
from hf_ropeid.gguf_export import GGUFExportError, rope_plan
from hf_ropeid.parameters import RECIPES, apply_recipe
from hf_ropeid.support import REFUSED, SUPPORT, WHERE_INSTALLED, YES, support_table

from conftest import tiny_llama_config

L = 64
README = Path(__file__).resolve().parents[1] / "README.md"


def recipe_model(recipe: str, attn: str = "sdpa") -> LlamaRopeIDForCausalLM:
    torch.manual_seed(0)
    params = {k: v for k, v in apply_recipe({"training_length": L}, recipe).items() if v is not None}
    config = RopeIDConfig.from_llama_config(tiny_llama_config(), shortest_period=8.0, **params)
    config._attn_implementation = attn
    return LlamaRopeIDForCausalLM(config).eval()


def claim(feature: str, recipe: str) -> str:
    return SUPPORT[feature][recipe]


IDS = torch.randint(0, 256, (1, 3 * L), generator=torch.Generator().manual_seed(0))


def eager_logits(recipe):
    with torch.no_grad():
        return recipe_model(recipe, "eager")(IDS).logits


def check_runs_or_refused(recipe: str, feature: str, implementation: str):
    model = recipe_model(recipe)
    if claim(feature, recipe).startswith(YES):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            got = model(IDS).logits
        torch.testing.assert_close(got, eager_logits(recipe), atol=1e-4, rtol=1e-4)
    elif claim(feature, recipe) == REFUSED:
        with pytest.raises(ValueError) as info:
            model.set_attn_implementation(implementation)
        assert "\n" not in str(info.value) and repr(implementation) in str(info.value)
    else:
        pytest.fail(f"unknown claim {claim(feature, recipe)!r}")


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("implementation", ["eager", "sdpa", "flex_attention"])
def test_attention_claims(recipe, implementation):
    check_runs_or_refused(recipe, f"attention `{implementation}`", implementation)


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_flash_attention_claims(recipe):
    feature = "attention `flash_attention_2`"
    if claim(feature, recipe) == WHERE_INSTALLED:
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            pytest.skip("flash-attn is not installed here; the claim says 'where installed'")
        if not torch.cuda.is_available():
            pytest.skip("flash-attn needs CUDA")
    check_runs_or_refused(recipe, feature, "flash_attention_2")


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_foreign_backend_claims(recipe):
    def engine(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling,
                                                               enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("support_engine", engine)
    try:
        check_runs_or_refused(recipe, "a foreign backend (vLLM / SGLang Transformers backend)", "support_engine")
    finally:
        AttentionInterface._global_mapping.pop("support_engine", None)


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_cache_generation_padding_compile_and_checkpointing_claims(recipe):
    for feature in ("`DynamicCache`, `generate()`", "`StaticCache` (`cache_implementation=\"static\"`)",
                    "left-padded batches (each row as alone)", "`torch.compile`", "activation checkpointing"):
        assert claim(feature, recipe) == YES, "this test checks 'yes' claims; a new claim needs its check"
    model = recipe_model(recipe)
    with torch.no_grad():
        full = model(IDS).logits
        dynamic = model.generate(IDS[:, :-8], max_new_tokens=8, do_sample=False, pad_token_id=258,
                                 output_logits=True, return_dict_in_generate=True)
        static = model.generate(IDS[:, :-8], max_new_tokens=8, do_sample=False, pad_token_id=258,
                                cache_implementation="static")
        first = dynamic.logits[0]  # the cached prefill's last logits = the full forward's
        torch.testing.assert_close(first[0], full[0, -9], atol=1e-4, rtol=1e-4)
        assert torch.equal(dynamic.sequences, static)
        mask = torch.ones(2, IDS.shape[1], dtype=torch.long)
        mask[1, :40] = 0
        ids = torch.cat([IDS, torch.cat([torch.zeros(1, 40, dtype=torch.long), IDS[:, :-40]], 1)])
        padded = model(ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
        torch.testing.assert_close(padded[1, 40:], model(IDS[:, :-40]).logits[0], atol=1e-4, rtol=1e-4)
        compiled = torch.compile(model, backend="aot_eager")
        torch.testing.assert_close(compiled(IDS).logits, full, atol=1e-5, rtol=1e-5)
    model.train()
    model(IDS, labels=IDS).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(IDS, labels=IDS).loss.backward()
    for a, p in zip(plain, model.parameters()):
        torch.testing.assert_close(p.grad, a, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_gguf_export_claims(recipe):
    config = recipe_model(recipe).config
    if claim("`hf-ropeid export-gguf` (llama.cpp)", recipe) == YES:
        assert rope_plan(config, "llama")
    else:
        with pytest.raises(GGUFExportError):
            rope_plan(config, "llama")


def test_the_readme_shows_exactly_the_support_table():
    text = README.read_text()
    found = re.search(r"<!-- support-table:start -->\n(.*?)\n<!-- support-table:end -->", text, re.S)
    assert found, "README.md has no support table markers"
    assert found.group(1) == support_table(), "README's support table differs from hf_ropeid/support.py"
