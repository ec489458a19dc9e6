"""Does RoPE-ID cost anything at inference? Stock Llama vs LlamaRopeIDForCausalLM, same weights.

Runs alternate (stock, rope-id, stock, ...) in one process so drift hits both alike, and prints the
median of each and their ratio (RoPE-ID / stock; below 1 is faster). Peak memory is measured per
model in a fresh subprocess (CPU: peak RSS; CUDA: max_memory_allocated).

    python benchmarks/core_overhead.py                       # SmolLM2-135M geometry, CPU
    python benchmarks/core_overhead.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import typer
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ropeid import LlamaRopeIDForCausalLM, RopeIDConfig

# SmolLM2-135M's geometry (30 layers, GQA 9/3, head_dim 64); random weights suffice for timing.
SMOLLM2 = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True,
    rope_parameters={"rope_type": "default", "rope_theta": 100_000.0},
)


def build_pair(dtype: torch.dtype, device: str, attn: str):
    torch.manual_seed(0)
    stock = LlamaForCausalLM(LlamaConfig(**SMOLLM2, attn_implementation=attn)).to(dtype=dtype, device=device).eval()
    config = RopeIDConfig.from_llama_config(stock.config)
    config._attn_implementation = attn
    rope_id = LlamaRopeIDForCausalLM(config).to(dtype=dtype, device=device).eval()
    rope_id.load_state_dict(stock.state_dict())
    return stock, rope_id


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def prefill_seconds(model, ids, device) -> float:
    sync(device)
    start = time.perf_counter()
    model(ids, use_cache=False, logits_to_keep=1)
    sync(device)
    return time.perf_counter() - start


@torch.inference_mode()
def decode_tokens_per_second(model, ids, new_tokens, device) -> float:
    out = model(ids, use_cache=True, logits_to_keep=1)
    cache, token = out.cache, out.logits[:, -1:].argmax(-1)
    sync(device)
    start = time.perf_counter()
    for _ in range(new_tokens):
        out = model(token, cache=cache, use_cache=True)
        cache, token = out.cache, out.logits[:, -1:].argmax(-1)
    sync(device)
    return new_tokens / (time.perf_counter() - start)


def peak_memory_mb(which: str, prefill: int, dtype: str, device: str, attn: str) -> float:
    """Peak memory of one prefill, measured in a fresh process so the two models never share a peak."""
    code = (
        "import sys, torch, resource; sys.argv=['x']; import importlib.util as u;"
        f"spec=u.spec_from_file_location('b', {__file__!r}); b=u.module_from_spec(spec); spec.loader.exec_module(b);"
        f"s, r = b.build_pair(torch.{dtype}, {device!r}, {attn!r}); m = s if {which!r}=='stock' else r; del s, r;"
        f"ids=torch.randint(0, 49152, (1, {prefill}), device={device!r});"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        f"torch.cuda.reset_peak_memory_stats() if {device!r}.startswith('cuda') else None;"
        "b.prefill_seconds(m, ids, " + repr(device) + ");"
        f"print(torch.cuda.max_memory_allocated()/2**20 if {device!r}.startswith('cuda') else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(
    prefill: int = typer.Option(2048, help="Prompt length for the prefill timing."),
    decode: int = typer.Option(64, help="Tokens generated for the decode timing."),
    repeats: int = typer.Option(5, help="Alternating repeats per model."),
    device: str = typer.Option("cpu"),
    dtype: str = typer.Option("float32"),
    attn: str = typer.Option("sdpa", help="attn_implementation for both models."),
    out: Path = typer.Option(Path("benchmarks/results/core_overhead.json")),
) -> None:
    stock, rope_id = build_pair(getattr(torch, dtype), device, attn)
    ids = torch.randint(0, SMOLLM2["vocab_size"], (1, prefill), device=device)
    models = {"stock": stock, "rope_id": rope_id}
    for model in models.values():  # warm-up
        prefill_seconds(model, ids[:, :256], device)
        decode_tokens_per_second(model, ids[:, :256], 4, device)
    prefill_s = {k: [] for k in models}
    decode_tps = {k: [] for k in models}
    for _ in range(repeats):
        for name, model in models.items():
            prefill_s[name].append(prefill_seconds(model, ids, device))
            decode_tps[name].append(decode_tokens_per_second(model, ids, decode, device))
    peak = {name: peak_memory_mb(name, prefill, dtype, device, attn) for name in models}
    med = lambda xs: statistics.median(xs)  # noqa: E731
    result = {
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": dtype, "attn": attn,
        "prefill_tokens": prefill, "decode_tokens": decode, "repeats": repeats,
        "prefill_seconds": {k: med(v) for k, v in prefill_s.items()},
        "decode_tokens_per_second": {k: med(v) for k, v in decode_tps.items()},
        "peak_memory_mb": peak,
        "ratios_rope_id_over_stock": {
            "prefill_time": med(prefill_s["rope_id"]) / med(prefill_s["stock"]),
            "decode_time_per_token": med(decode_tps["stock"]) / med(decode_tps["rope_id"]),
            "peak_memory": peak["rope_id"] / peak["stock"],
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
