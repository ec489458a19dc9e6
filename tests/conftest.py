"""Shared tiny models for the test suite (random weights, seconds on a CPU, no downloads)."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # guard: any Hub access in a test raises
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import hf_ropeid  # noqa: F401  (registers the rope type and Auto classes)

# Prepended to code run in a child Python: makes `import hf_ropeid` fail there, as on a machine
# without the package, so remote-code loading is tested for real.
HIDE_PACKAGE = """
import sys
class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "hf_ropeid" or name.startswith("hf_ropeid."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
        return None
sys.meta_path.insert(0, _Hide())
sys.path = [p for p in sys.path if "hf_ropeid" not in p]
"""

TINY = dict(
    vocab_size=260,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
    bos_token_id=256,
    eos_token_id=257,
    pad_token_id=258,
)


def load_benchmark(name: str, module_name: str | None = None):
    """``benchmarks/NAME.py`` imported as a module (the benchmarks are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(module_name or name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def tiny_llama_config(**overrides) -> LlamaConfig:
    values = {**TINY, **overrides}
    return LlamaConfig(**values)


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(**overrides)).eval()
    # Larger-than-default weights so that positions visibly matter in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.normal_(0, 0.3)
    return model


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (ids 0-255 are bytes) built offline, with BOS/EOS/PAD at 256-258."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_to_char = bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(256)}
    vocab.update({"<s>": 256, "</s>": 257, "<pad>": 258, "<unk>": 259})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture
def tiny_llama_dir(tmp_path):
    """A saved tiny Llama checkpoint with tokenizer and generation config, like a real one."""
    path = tmp_path / "tiny-llama"
    tiny_llama().save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path
