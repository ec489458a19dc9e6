"""hf_ropeid.training: LoRA / full continued training, evaluation, checkpoints, exact resume, CLI."""

from __future__ import annotations

import json
import random

import pytest
import torch
from typer.testing import CliRunner

from hf_ropeid.atomic import TargetExistsError
from hf_ropeid.conversion import convert_model
from hf_ropeid.training import FinetuneArguments, TrainingError, list_checkpoints, read_log, train

from conftest import byte_tokenizer, tiny_llama

WORDS = "the of and to in is was for on that with as by at from his her it not be".split()


def write_corpus(root, documents: int = 6, words: int = 200, seed: int = 0):
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(documents):
        (root / f"doc{i}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(words)))
    return root


def save_rope_id_base(path, tie_word_embeddings: bool = False, **overrides):
    """A tiny converted RoPE-ID checkpoint with a tokenizer (paper spectrum, periods 8..64, L = 128)."""
    llama = tiny_llama(tie_word_embeddings=tie_word_embeddings, **overrides)
    model = convert_model(llama, spectrum="rope_id", rotary_fraction=0.5, shortest_period=8)
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def rope_id_base(tmp_path):
    return save_rope_id_base(tmp_path / "base")


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus")


def arguments(base, corpus, out, **overrides) -> FinetuneArguments:
    values = dict(model=str(base), data=[str(corpus)], output_dir=str(out), seq_length=32, eval_fraction=0.34,
                  eval_lengths=[32, 64], eval_tokens=128, max_steps=4, lora_r=4, lora_alpha=8, learning_rate=1e-2,
                  lora_dropout=0.1)
    values.update(overrides)
    return FinetuneArguments.from_flat(**values)


def test_lora_run_learns_logs_and_saves_an_adapter_peft_reloads(rope_id_base, corpus, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = train(arguments(rope_id_base, corpus, tmp_path / "run", max_steps=8, eval_every=4))
    log = read_log(tmp_path / "run")
    losses = [r["loss"] for r in log if "loss" in r]
    evals = [r for r in log if "eval_ppl@64" in r]
    assert len(losses) == 8 and all(r["tokens_per_s"] > 0 for r in log if "loss" in r)
    assert [r["step"] for r in evals] == [0, 4, 8]
    assert evals[-1]["eval_ppl@32"] < evals[0]["eval_ppl@32"]  # lr 1e-2 on repetitive text: it learns
    adapter = tmp_path / "run" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(rope_id_base.resolve())

    trained = result["model"].eval()
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(rope_id_base), adapter).eval()
    ids = torch.randint(0, 256, (2, 48))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, trained(ids).logits, rtol=0, atol=1e-6)
        base_logits = AutoModelForCausalLM.from_pretrained(rope_id_base)(ids).logits
    assert (base_logits - trained(ids).logits).abs().max() > 1e-2  # the adapter changed something


def test_interrupted_and_resumed_run_reproduces_the_uninterrupted_one(rope_id_base, corpus, tmp_path, monkeypatch):
    """Crash while writing the step-4 checkpoint; resume from step 2; loss curve and adapter are identical.

    Dropout, gradient accumulation, several epochs and trainable embeddings and norms all take part.
    """
    from accelerate import Accelerator
    from safetensors.torch import load_file

    common = dict(max_steps=6, save_every=2, eval_every=3, gradient_accumulation_steps=2, batch_size=2,
                  train_embeddings_and_norms=True, lr_scheduler="cosine", warmup_steps=1, seq_length=48)
    corpus = write_corpus(tmp_path / "small", words=40)  # about 3 steps per epoch
    train(arguments(rope_id_base, corpus, tmp_path / "straight", **common))
    straight = read_log(tmp_path / "straight")
    assert max(r.get("epoch", 0) for r in straight) >= 1  # the run crosses an epoch boundary

    real_save_state, calls = Accelerator.save_state, []

    def crash_on_second_checkpoint(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:
            real_save_state(self, output_dir, **kwargs)
            raise KeyboardInterrupt("simulated crash while checkpointing")
        return real_save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", crash_on_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train(arguments(rope_id_base, corpus, tmp_path / "resumed", **common))
    monkeypatch.setattr(Accelerator, "save_state", real_save_state)
    assert [p.name for p in list_checkpoints(tmp_path / "resumed")] == ["step-000002"]  # the half-written one is not used
    assert not (tmp_path / "resumed" / "adapter").exists()

    train(arguments(rope_id_base, corpus, tmp_path / "resumed", resume_from="latest", **common))
    def curve(log):  # everything but the wall-clock speed
        return [{k: v for k, v in record.items() if k != "tokens_per_s"} for record in log]

    assert curve(read_log(tmp_path / "resumed")) == curve(straight)
    a = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any("embed_tokens" in k for k in a) and any("layernorm" in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_llama_folder_is_converted_in_the_same_run(tiny_llama_dir, corpus, tmp_path, caplog):
    from transformers import AutoConfig

    with caplog.at_level("WARNING", logger="hf_ropeid.training"):
        train(arguments(tiny_llama_dir, corpus, tmp_path / "run", max_steps=1, spectrum="rope_id",
                        rotary_fraction="0.5", shortest_period=8.0, eval_fraction=0.0))
    base = tmp_path / "run" / "base"
    config = AutoConfig.from_pretrained(base)
    assert config.model_type == "llama_rope_id" and config.rope_parameters["spectrum"] == "rope_id"
    # The default recipe (far-context) filled the window; sequences of 32 never reach it, and the run says so.
    assert config.rope_parameters["rotary_window"] == 64
    assert "--seq-length 32 is not longer than rotary_window 64" in caplog.text
    assert (base / "modeling_rope_id.py").is_file()
    adapter_config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(base.resolve())


def test_full_finetune_without_conversion_saves_the_model_it_trained(tiny_llama_dir, corpus, tmp_path):
    from transformers import AutoModelForCausalLM

    result = train(arguments(tiny_llama_dir, corpus, tmp_path / "run", max_steps=2, convert=False, full_finetune=True,
                             eval_fraction=0.0))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model").eval()
    assert model.config.model_type == "llama" and not (tmp_path / "run" / "base").exists()
    ids = torch.randint(0, 256, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, result["model"].eval()(ids).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(lora_r=0), "--lora-r must be a positive integer"),
        (dict(lora_dropout=1.0), r"--lora-dropout must be in \[0, 1\)"),
        (dict(learning_rate=-1.0), "--learning-rate must be positive"),
        (dict(lr_scheduler="step"), "--lr-scheduler must be one of cosine, linear, constant"),
        (dict(mixed_precision="fp8"), "--mixed-precision must be one of no, bf16, fp16"),
        (dict(seq_length=1), "--seq-length must be at least 2"),
        (dict(rotary_fraction="half"), "--rotary-fraction: rotary_fraction .half. is not understood"),
        (dict(rotary_fraction="auto:x"), "--rotary-fraction: rotary_fraction .auto:x. is not understood"),
        (dict(eval_data=["x"], eval_fraction=0.2), "either --eval-data or --eval-fraction"),
        (dict(report_to=["mlflow"]), "Unknown --report-to"),
        (dict(data=[]), "No training data"),
    ],
)
def test_out_of_range_arguments_are_refused_naming_the_option(overrides, message, tmp_path):
    with pytest.raises(TrainingError, match=message):
        arguments(tmp_path, tmp_path, tmp_path / "out", **overrides)


def test_refused_runs_raise_before_the_first_step(rope_id_base, corpus, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(TargetExistsError, match="not empty; pass --force to replace it or --resume-from"):
        train(arguments(rope_id_base, corpus, tmp_path / "taken"))
    with pytest.raises(TrainingError, match="do not fit the model"):
        train(arguments(rope_id_base, corpus, tmp_path / "a", target_modules=["c_attn"]))
    with pytest.raises(TrainingError, match="apply only when converting"):
        train(arguments(rope_id_base, corpus, tmp_path / "b", spectrum="minimal"))
    with pytest.raises(TrainingError, match="no complete checkpoint"):
        train(arguments(rope_id_base, corpus, tmp_path / "c", resume_from="latest"))
    from hf_ropeid.data import DataError

    with pytest.raises(DataError, match="shorter than the evaluation length 4096"):
        train(arguments(rope_id_base, corpus, tmp_path / "d", eval_lengths=[4096]))


def test_resume_refuses_changed_arguments(rope_id_base, corpus, tmp_path):
    train(arguments(rope_id_base, corpus, tmp_path / "run", max_steps=1, save_every=1, eval_fraction=0.0))
    with pytest.raises(TrainingError, match=r"learning_rate: 0.01 -> 0.02"):
        train(arguments(rope_id_base, corpus, tmp_path / "run", max_steps=2, eval_fraction=0.0, learning_rate=2e-2,
                        resume_from="latest"))


def test_finetune_command_trains_and_missing_data_exits_2(rope_id_base, corpus, tmp_path):
    from hf_ropeid.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["finetune", "--model", str(rope_id_base), "--data", str(corpus), "--output-dir",
                             str(tmp_path / "run"), "--seq-length", "32", "--max-steps", "1", "--lora-r", "2",
                             "--target-modules", "q_proj", "--target-modules", "v_proj", "--no-eval-at-start"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout[ok.stdout.index("{"):])["steps"] == 1
    adapter_config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"] and adapter_config["r"] == 2
    bad = runner.invoke(app, ["finetune", "--model", str(rope_id_base), "--data", str(tmp_path / "nope.txt"),
                              "--output-dir", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "error: " in bad.output and "does not exist" in bad.output


def test_activation_checkpointing_changes_memory_not_results(rope_id_base, corpus, tmp_path):
    common = dict(max_steps=2, eval_fraction=0.0, lora_dropout=0.0, train_embeddings_and_norms=True)
    train(arguments(rope_id_base, corpus, tmp_path / "plain", **common))
    train(arguments(rope_id_base, corpus, tmp_path / "recompute", activation_checkpointing=True, **common))
    plain = [r["loss"] for r in read_log(tmp_path / "plain") if "loss" in r]
    recompute = [r["loss"] for r in read_log(tmp_path / "recompute") if "loss" in r]
    assert plain == pytest.approx(recompute, rel=1e-5, abs=1e-6) and len(plain) == 2
