"""Long-sequence training: the loss without full-length logits, global positions for sharded sequences
(context parallelism, simulated on CPU), mixed precision, and the options that refuse what cannot run."""

from __future__ import annotations

import math

import pytest
import torch

from hf_ropeid import training
from hf_ropeid.training import (
    IGNORE_INDEX,
    FinetuneArguments,
    TrainingError,
    causal_lm_loss,
    chunked_token_losses,
    collate_blocks,
    context_parallelism,
    read_log,
    train,
)

from conftest import tiny_llama
from test_training import arguments, corpus, rope_id_base, save_rope_id_base  # noqa: F401  (fixtures)


def _batch(length: int, batch_size: int = 2, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    rows = [{"input_ids": torch.randint(0, 256, (length,), generator=generator).tolist()} for _ in range(batch_size)]
    return collate_blocks(rows)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_batches_carry_global_positions_and_pre_shifted_labels():
    batch = _batch(6, batch_size=2)
    ids = batch["input_ids"]
    assert batch["position_ids"].tolist() == [list(range(6))] * 2
    assert torch.equal(batch["shift_labels"][:, :-1], ids[:, 1:])
    assert (batch["shift_labels"][:, -1] == IGNORE_INDEX).all()
    assert "labels" not in batch  # the model is never asked for its own (full-logits) loss


@pytest.mark.parametrize("tie_word_embeddings", [False, True])
def test_chunked_loss_and_gradients_equal_the_full_logits_loss(monkeypatch, tie_word_embeddings):
    """Loss and every gradient of the chunked LM head equal the model's own loss (full logits) to ~1e-6.

    The head runs on 7 positions at a time (uneven chunks), and is never called on more.
    """
    monkeypatch.setattr(training, "LOSS_CHUNK_ELEMENTS", 7 * 2 * 260)
    monkeypatch.setattr(training, "MIN_LOSS_CHUNK", 1)
    model = tiny_llama(tie_word_embeddings=tie_word_embeddings).train()
    batch = _batch(48)

    full = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
    full.backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)

    widths = []
    hook = model.lm_head.register_forward_hook(lambda module, args, out: widths.append(args[0].shape[1]))
    chunked = causal_lm_loss(model, batch)
    chunked.backward()
    hook.remove()
    got = _grads(model)

    assert abs(chunked.item() - full.item()) < 1e-5  # a few float32 ulps: summation order differs by thread count
    assert got.keys() == expected.keys() and "lm_head.weight" in got or tie_word_embeddings
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    # forward: 7 chunks (6 x 7 + 6) and a 0-position head call inside the model; backward recomputes each chunk
    assert max(widths) == 7 and sorted(set(widths)) == [0, 6, 7] and widths.count(7) == 2 * 6


def test_lora_training_step_never_computes_full_length_logits(rope_id_base, corpus, tmp_path, monkeypatch):  # noqa: F811
    from transformers.models.llama.modeling_llama import LlamaForCausalLM

    monkeypatch.setattr(training, "MIN_LOSS_CHUNK", 8)
    monkeypatch.setattr(training, "LOSS_CHUNK_ELEMENTS", 1)
    widths = []
    real_init = LlamaForCausalLM.__init__

    def recording_init(self, config):
        real_init(self, config)
        self.lm_head.register_forward_hook(lambda module, args, out: widths.append(args[0].shape[1]))

    monkeypatch.setattr(LlamaForCausalLM, "__init__", recording_init)
    train(arguments(rope_id_base, corpus, tmp_path / "run", max_steps=2, eval_fraction=0.0))
    assert widths and max(widths) == 8  # seq_length 32, chunks of 8


def _forward_shards(model, batch, shards: int, positions: str):
    """Runs the sequence shard by shard, each with the keys and values of the shards before it (a cache, as
    ring attention provides them), and returns the per-token losses and the mean loss over the sequence."""
    from transformers import DynamicCache

    n = batch["input_ids"].shape[1]
    cache = DynamicCache(config=model.config)
    losses = []
    for ids, pos, labels in zip(*(batch[k].split(n // shards, dim=1) for k in ("input_ids", "position_ids",
                                                                               "shift_labels"))):
        if positions == "local":  # the bug context parallelism must not have: every shard restarts at 0
            pos = torch.arange(ids.shape[1]).expand_as(ids)
        out = model(input_ids=ids, position_ids=pos, cache=cache, use_cache=True, output_hidden_states=True,
                    logits_to_keep=torch.empty(0, dtype=torch.long))
        losses.append(chunked_token_losses(model.lm_head, out.hidden_states[-1], labels, chunk_tokens=16))
    losses = torch.cat(losses, dim=1)
    return losses, losses.sum() / (batch["shift_labels"] != IGNORE_INDEX).sum()


def test_shards_with_global_positions_reproduce_the_unsplit_sequence_past_the_training_length(tmp_path):
    """Context parallelism by simulation, on a RoPE-ID model (L = 128) at 320 tokens: the query temperature
    is active past L. Four shards that carry their global position_ids give the unsplit per-token losses and
    gradients; the same shards with local positions do not."""
    from transformers import AutoModelForCausalLM

    base = save_rope_id_base(tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(base).train()
    rope = model.config.rope_parameters
    assert rope["training_length"] == 128 and rope["temperature"] != "none"
    batch = _batch(320, batch_size=1, seed=3)

    hidden = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                   output_hidden_states=True, logits_to_keep=torch.empty(0, dtype=torch.long)).hidden_states[-1]
    whole = chunked_token_losses(model.lm_head, hidden, batch["shift_labels"], chunk_tokens=16)
    loss = causal_lm_loss(model, batch)  # what a training step computes
    assert abs(loss.item() - (whole.sum() / 319).item()) < 1e-6
    loss.backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)

    sharded, sharded_loss = _forward_shards(model, batch, shards=4, positions="global")
    sharded_loss.backward()
    torch.testing.assert_close(sharded, whole, rtol=1e-5, atol=1e-5)
    assert abs(sharded_loss.item() - loss.item()) < 1e-5
    got = _grads(model)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
    model.zero_grad(set_to_none=True)

    with torch.no_grad():
        broken, _ = _forward_shards(model, batch, shards=4, positions="local")
    assert torch.equal(broken[:, :80], whole[:, :80].detach())  # the first shard's positions are right anyway
    assert (broken[:, 80:] - whole[:, 80:]).abs().max() > 1e-2  # every later shard sees wrong positions


def test_context_parallel_size_is_refused_where_it_cannot_run(rope_id_base, corpus, tmp_path,  # noqa: F811
                                                               tiny_llama_dir):
    assert context_parallelism(arguments(rope_id_base, corpus, tmp_path / "a")) is None
    with pytest.raises(TrainingError, match="--context-parallel-size must be at least 1"):
        arguments(rope_id_base, corpus, tmp_path / "a", context_parallel_size=0)
    windowed = save_rope_id_base(tmp_path / "windowed")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(windowed)
    config.rope_parameters = {**config.rope_parameters, "rotary_window": 64}
    config.save_pretrained(windowed)
    with pytest.raises(TrainingError, match="rotary_window is not supported with context parallelism"):
        train(arguments(windowed, corpus, tmp_path / "b", context_parallel_size=2))
    # A plain Llama converted by finetune gets the default recipe's window: refused the same way.
    with pytest.raises(TrainingError, match="rotary_window is not supported with context parallelism"):
        train(arguments(tiny_llama_dir, corpus, tmp_path / "b", context_parallel_size=2))
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="needs CUDA GPUs"):
            train(arguments(rope_id_base, corpus, tmp_path / "c", context_parallel_size=2))
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()  # refused before any work


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state; a run in another precision needs it reset (before and after)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_autocast_run_on_cpu_trains_saves_and_merges(rope_id_base, corpus, tmp_path, fresh_accelerator_state):  # noqa: F811
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from hf_ropeid.merge import merge_adapter

    result = train(arguments(rope_id_base, corpus, tmp_path / "run", max_steps=3, mixed_precision="bf16",
                             eval_fraction=0.0, train_embeddings_and_norms=True))
    losses = [r["loss"] for r in read_log(tmp_path / "run") if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    adapter = tmp_path / "run" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()

    ids = torch.randint(0, 256, (1, 40))
    with torch.no_grad():
        # the reference: base + adapter in float32 (peft, no autocast)
        reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(rope_id_base), adapter).eval()
        expected = reference(ids).logits
        scale = expected.abs().max().item()
        # the trained model as returned keeps accelerate's bf16 autocast wrapper: what training computed with
        trained = result["model"].eval()(ids).logits.float()
        assert 0 < (trained - expected).abs().max().item() < 0.05 * scale
        for dtype in ("float32", "bfloat16"):
            folder = merge_adapter(adapter, tmp_path / f"merged-{dtype}", dtype=dtype)
            merged = AutoModelForCausalLM.from_pretrained(folder, dtype="auto").eval()
            assert merged.dtype == getattr(torch, dtype)
            logits = merged(ids).logits.float()
            if dtype == "float32":  # the merge itself is exact
                torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
            else:  # bf16 weights and activations: bf16 tolerance
                assert (logits - expected).abs().max().item() < 0.05 * scale


def test_gradient_checkpointing_is_an_alias_of_activation_checkpointing(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from hf_ropeid.cli import app
    from hf_ropeid.cli import finetune as command

    seen = {}

    def fake_train(args: FinetuneArguments):
        seen["args"] = args
        return {"model": None}

    monkeypatch.setattr(command, "train", fake_train)
    result = CliRunner().invoke(app, ["finetune", "--model", "m", "--data", "d", "--output-dir", str(tmp_path),
                                      "--gradient-checkpointing", "--context-parallel-size", "1"])
    assert result.exit_code == 0, result.output
    assert seen["args"].optimization.activation_checkpointing is True
    assert seen["args"].adapter.lora_dropout == 0.0  # the default: no dropped copy of every LoRA input
