"""Real multi-process data parallel training on CPUs (gloo), started by ``accelerate launch``.

With accelerate 1.15, ``accelerate launch --cpu --num_processes 2`` starts ONE process (its CPU launcher
only forks through mpirun with a hostfile). Two gloo processes need the torchrun-based launcher with
CPU forced: ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2``.

FSDP2 does not run on CPUs with accelerate 1.15: ``AcceleratorState`` turns a launch into FSDP only on
top of a GPU-like distributed type (``accelerate/state.py``), so ``--use_fsdp --fsdp_version 2`` with
``ACCELERATE_USE_CPU=1`` silently runs plain DDP (MULTI_CPU) and without it each process trains alone
(DistributedType.NO). The loop refuses both; the FSDP2 equality test needs 2 GPUs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
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


FSDP2_FLAGS = ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
               "--fsdp_transformer_layer_cls_to_wrap", "LlamaRopeIDDecoderLayer"]
NO_FSDP_ON_CPU = (
    "accelerate 1.15 builds FSDP only on top of a GPU-like distributed type (accelerate/state.py): on CPUs, "
    "--use_fsdp with ACCELERATE_USE_CPU=1 runs plain DDP and without it each process trains alone; needs 2 GPUs"
)


def launch(tmp_path, options: list[str], *, processes: int = 2, flags=(), env_extra=None, timeout: int = 420):
    """``accelerate launch`` of conversion/finetune_lora.py on ``processes`` processes (gloo on CPUs)."""
    multi = [] if flags else ["--multi_gpu"]  # --use_fsdp and --multi_gpu exclude each other
    command = [sys.executable, "-m", "accelerate.commands.launch", *multi, *flags, "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(free_port()), str(SCRIPT), *options]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           **({} if torch.cuda.is_available() else {"ACCELERATE_USE_CPU": "1"}), **(env_extra or {})}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def tiny_run_options(tmp_path, **extra) -> list[str]:
    base = tmp_path / "base"
    if not base.exists():
        save_rope_id_base(base)
        write_corpus(tmp_path / "corpus", words=120)
    options = ["--model", str(base), "--data", str(tmp_path / "corpus"), "--seq-length", "32", "--eval-fraction",
               "0.34", "--eval-lengths", "32", "--eval-tokens", "96", "--lora-r", "2", "--learning-rate", "0.01",
               "--target-modules", "q_proj", "--target-modules", "v_proj"]
    for key, value in extra.items():
        options += [f"--{key.replace('_', '-')}", str(value)]
    return options


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour of an FSDP launch")
def test_fsdp2_launch_on_cpus_is_refused_instead_of_silently_running_ddp(tmp_path):
    done = launch(tmp_path, [*tiny_run_options(tmp_path, max_steps=1), "--output-dir", str(tmp_path / "run")],
                  flags=FSDP2_FLAGS)
    assert done.returncode != 0
    assert "error: FSDP was asked for (accelerate launch --use_fsdp), but accelerate set up MULTI_CPU" in done.stderr
    assert not (tmp_path / "run" / "adapter").exists()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason=NO_FSDP_ON_CPU)
def test_fsdp2_two_processes_train_the_same_adapter_as_one_process_with_twice_the_batch(tmp_path):
    options = tiny_run_options(tmp_path, max_steps=3, lora_dropout=0)
    done = launch(tmp_path, [*options, "--output-dir", str(tmp_path / "fsdp2"), "--batch-size", "1"], flags=FSDP2_FLAGS)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((tmp_path / "fsdp2" / "adapter" / "training_summary.json").read_text())
    assert summary["processes"] == 2 and summary["distributed_type"] == "FSDP"
    one = launch(tmp_path, [*options, "--output-dir", str(tmp_path / "single"), "--batch-size", "2"], processes=1)
    assert one.returncode == 0, one.stderr[-4000:]
    a = load_file(tmp_path / "fsdp2" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "single" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    worst = max((a[k].cpu() - b[k].cpu()).abs().max().item() for k in b)
    assert worst < 1e-5, f"FSDP2 2-rank adapter differs from the 1-process batch-2 adapter by {worst}"


def test_resumed_two_process_run_is_bit_identical_to_the_uninterrupted_one(tmp_path):
    """2 gloo ranks with LoRA dropout (a distinct RNG stream per rank): stop after the step-2 checkpoint,
    resume to step 4; every logged loss and evaluation and every adapter tensor equal the straight run's."""
    options = tiny_run_options(tmp_path, lora_dropout=0.1, lr_scheduler="constant", save_every=2, eval_every=2,
                               batch_size=1)
    straight = launch(tmp_path, [*options, "--max-steps", "4", "--output-dir", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr[-4000:]
    first = launch(tmp_path, [*options, "--max-steps", "2", "--output-dir", str(tmp_path / "resumed")])
    assert first.returncode == 0, first.stderr[-4000:]
    resumed = launch(tmp_path, [*options, "--max-steps", "4", "--output-dir", str(tmp_path / "resumed"),
                                "--resume-from", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    def curve(out):  # everything but the wall-clock speed
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_log(out)]

    assert [r["step"] for r in curve(tmp_path / "straight") if "loss" in r] == [1, 2, 3, 4]
    assert curve(tmp_path / "resumed") == curve(tmp_path / "straight")
    a = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert json.loads((tmp_path / "resumed" / "adapter" / "training_summary.json").read_text())["processes"] == 2
