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

from test_training import save_rope_id_base, write_corpus

from hf_ropeid.training import read_log

SCRIPT = Path(__file__).resolve().parents[1] / "conversion" / "finetune_lora.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_step_together_and_write_the_adapter_once(tmp_path):
    base = save_rope_id_base(tmp_path / "base")
    corpus = write_corpus(tmp_path / "corpus", words=120)
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(SCRIPT),
        "--model", str(base), "--data", str(corpus), "--output-dir", str(out), "--seq-length", "32",
        "--max-steps", "3", "--save-every", "3", "--eval-fraction", "0.34", "--eval-lengths", "32",
        "--eval-tokens", "96", "--lora-r", "2", "--target-modules", "q_proj", "--target-modules", "v_proj",
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
