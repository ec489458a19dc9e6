"""Real multi-process data parallel training on CPUs (gloo), started by ``accelerate launch``.

With accelerate 1.15, ``accelerate launch --cpu --num_processes 2`` starts ONE process (its CPU launcher
only forks through mpirun with a hostfile). Two gloo processes need the torchrun-based launcher with
CPU forced: ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from hf_ropeid.training import read_log

from test_training import save_rope_id_base, write_corpus

SCRIPT = Path(__file__).resolve().parents[1] / "conversion" / "finetune_lora.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_train_the_same_adapter_as_one_process_with_twice_the_batch(tmp_path):
    """Data parallel means synchronised gradients: 2 ranks x batch 1 must equal 1 process x batch 2.

    Rank r sees micro-batches r, r+2, ... of the same shuffled order, so the averaged gradient of a
    step is the gradient of the 1-process batch of 2 (dropout off, equal-length sequences). Ranks
    that trained independently would each follow half the data and end with another adapter.
    """
    base = save_rope_id_base(tmp_path / "base")
    corpus = write_corpus(tmp_path / "corpus", words=120)
    out = tmp_path / "run"
    options = ["--model", str(base), "--data", str(corpus), "--seq-length", "32", "--max-steps", "3",
               "--save-every", "3", "--eval-fraction", "0.34", "--eval-lengths", "32", "--eval-tokens", "96",
               "--lora-r", "2", "--lora-dropout", "0", "--learning-rate", "0.01",
               "--target-modules", "q_proj", "--target-modules", "v_proj"]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(SCRIPT),
        *options, "--output-dir", str(out), "--batch-size", "1",
    ]
    # A private HF_HOME: no user-level accelerate config can change the launch.
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "ACCELERATE_USE_CPU": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=420, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]

    summary = json.loads((out / "adapter" / "training_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 3
    assert done.stdout.count('"result_dir"') == 1  # the summary is printed by the main process only
    checkpoint = out / "checkpoints" / "step-000003"
    assert (checkpoint / "random_states_0.pkl").is_file() and (checkpoint / "random_states_1.pkl").is_file()  # both ranks got there
    log = read_log(out)
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in log if "eval_ppl@32" in r] == [0, 3]
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "checkpoints", "log.jsonl", "training_args.json"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000003"]

    single = tmp_path / "single"
    one = subprocess.run([sys.executable, str(SCRIPT), *options, "--output-dir", str(single), "--batch-size", "2"],
                         env={**env, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True, timeout=420, cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-4000:]
    two_ranks = load_file(out / "adapter" / "adapter_model.safetensors")
    one_rank = load_file(single / "adapter" / "adapter_model.safetensors")
    assert two_ranks.keys() == one_rank.keys() and two_ranks
    lora_b = [v for k, v in one_rank.items() if "lora_B" in k]
    assert lora_b and all(v.abs().max() > 1e-3 for v in lora_b)  # lora_B starts at 0: training moved it
    worst = max((two_ranks[k] - one_rank[k]).abs().max().item() for k in one_rank)
    assert worst < 1e-5, f"2-rank adapter differs from the 1-process batch-2 adapter by {worst}"
