"""What does ``rotary_window`` cost? Plain RoPE-ID (sdpa) vs rotary_window with the fused sdpa kernel and
with the eager kernel, same weights, timed alternately in one process.

Two workloads: a training step (forward + backward) of the toy model of
``toy_length_generalization.py`` at its training length, and a no-grad prefill of a long input. Prints
the median seconds of each and the ratios to plain RoPE-ID (1.00 = free), and writes them as JSON.

    python benchmarks/rotary_window_speed.py                  # CPU, 1 thread
    python benchmarks/rotary_window_speed.py --device cuda --threads 0
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch
import typer

from hf_ropeid import LlamaRopeIDForCausalLM, RopeIDConfig

TOY = dict(  # the toy benchmark's model (byte vocabulary, L = 128)
    vocab_size=257, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=4, max_position_embeddings=128,
)
ROPE = {"rope_type": "rope_id", "rope_theta": 10_000.0, "training_length": 128, "shortest_period": 8.0}
KINDS = {  # name: (rope_parameters extra, attention implementation)
    "rope_id (sdpa)": ({}, "sdpa"),
    "rotary_window, fused sdpa": ({"rotary_window": 64, "far_field": "log_count"}, "sdpa"),
    "rotary_window, eager": ({"rotary_window": 64, "far_field": "log_count"}, "eager"),
}


def build(extra: dict, attn: str, device: str) -> LlamaRopeIDForCausalLM:
    torch.manual_seed(0)
    config = RopeIDConfig(**TOY, rope_parameters={**ROPE, **extra}, attn_implementation=attn)
    return LlamaRopeIDForCausalLM(config).to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_step(model, ids, device) -> float:
    sync(device)
    start = time.perf_counter()
    model(input_ids=ids, labels=ids).loss.backward()
    sync(device)
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


@torch.no_grad()
def prefill(model, ids, device) -> float:
    sync(device)
    start = time.perf_counter()
    model(input_ids=ids, use_cache=False, logits_to_keep=1)
    sync(device)
    return time.perf_counter() - start


def main(
    device: str = typer.Option("cpu"),
    threads: int = typer.Option(1, help="torch threads on CPU (0: torch's default)."),
    repeats: int = typer.Option(7, help="Timed repeats of each workload per model (after one warm-up)."),
    batch: int = typer.Option(16, help="Training batch (the toy benchmark's)."),
    prefill_length: int = typer.Option(2048, help="Tokens of the no-grad prefill (16x the toy's L)."),
    out: Path = typer.Option(Path("benchmarks/results/rotary_window_speed.json")),
) -> None:
    if threads:
        torch.set_num_threads(threads)
    models = {name: build(extra, attn, device) for name, (extra, attn) in KINDS.items()}
    generator = torch.Generator().manual_seed(0)
    train_ids = torch.randint(0, 256, (batch, 128), generator=generator).to(device)
    long_ids = torch.randint(0, 256, (1, prefill_length), generator=generator).to(device)
    workloads = {"train step (16 x 128)": (train_step, train_ids), f"prefill {prefill_length}": (prefill, long_ids)}
    results = {}
    for workload, (measure, ids) in workloads.items():
        times = {name: [] for name in models}
        for name, model in models.items():
            measure(model, ids, device)  # warm-up
        for _ in range(repeats):
            for name, model in models.items():  # alternate, so load drift hits every model alike
                times[name].append(measure(model, ids, device))
        medians = {name: statistics.median(t) for name, t in times.items()}
        base = medians["rope_id (sdpa)"]
        results[workload] = {name: {"median_s": m, "ratio": m / base} for name, m in medians.items()}
        print(f"\n{workload}")
        for name, m in medians.items():
            print(f"  {name:28s} {m * 1000:9.1f} ms   x{m / base:.2f}")
    record = {"device": device if device != "cpu" else f"cpu ({platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads)", "torch": torch.__version__, "repeats": repeats, "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    typer.run(main)
