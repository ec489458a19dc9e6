"""The copy-capable pretraining recipe, the toy source checkpoint, and the new temperature options."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_ropeid import LlamaRopeIDForCausalLM, RopeIDConfig, pretraining
from hf_ropeid.rope_id import RopeIDParameters, query_temperature, scale_queries

from conftest import load_benchmark

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def synthetic_text() -> bytes:
    words = [b"to", b"be", b"or", b"not", b"that", b"is", b"the", b"question", b"whether", b"tis", b"nobler"]
    return b"\n".join(b" ".join(words[(i * 7 + k) % len(words)] for k in range(8)) for i in range(400))


def tiny_setup(**overrides) -> pretraining.PretrainSetup:
    stages = (pretraining.Stage(16, 3, 4, pretraining.CopyMixture()),
              pretraining.Stage(32, 3, 4, pretraining.CopyMixture(text_fraction=0.5, string_probability=0.5,
                                                                  segment_length=(3, 6), gap_length=(0, 10))))
    values = dict(layers=1, width=32, head_dim=16, training_length=32, warmup=1, stages=stages)
    return pretraining.PretrainSetup(**{**values, **overrides})


def test_recall_window_asks_each_fact_after_it_and_marks_only_the_recalled_digits():
    import re

    rng = random.Random(0)
    text = synthetic_text()  # lower-case words: no digits, so every digit belongs to a fact or an answer
    asked = 0
    for _ in range(200):
        window, copied = pretraining.recall_window(rng, text, 160, (1, 4))
        assert len(window) == len(copied) == 160
        data = bytes(window).decode()
        facts = {m.group(1): (m.start(), m.group(2)) for m in re.finditer(r" ([a-z ]+): ([0-9]+)\. ", data)}
        for m in re.finditer(r" ([a-z ]+): ([0-9]+)(?!\.)(?=\D|$)", data):
            key, value = m.group(1).split("  ")[-1], m.group(2)
            key = next((k for k in facts if key.endswith(k)), None)
            if key is None or m.end() == len(data):
                continue  # a question cut by the window's end
            start, fact_value = facts[key]
            assert start < m.start() and fact_value == value  # asked after its fact, same value
            digits = range(m.start(2), m.end(2))
            assert [copied[i] for i in digits] == [1] * len(value)
            asked += 1
        # Only recalled digits are marked, and each marked byte is a digit of an answer.
        assert all(chr(window[i]).isdigit() for i, c in enumerate(copied) if c)
    assert asked > 150


def test_training_window_follows_the_mixture_fractions():
    rng = random.Random(0)
    mixture = pretraining.CopyMixture(text_fraction=0.3, recall_fraction=0.5)
    kinds = {"text": 0, "marked": 0}
    for _ in range(400):
        window, copied = pretraining.training_window(rng, synthetic_text(), 64, mixture)
        kinds["text" if not any(copied) and not any(chr(b).isdigit() for b in window) else "marked"] += 1
    assert 0.2 < kinds["text"] / 400 < 0.4


@pytest.mark.parametrize("string_probability", [1.0, 0.5])
def test_copy_window_marks_exactly_the_bytes_that_repeat_their_segment(string_probability):
    mixture = pretraining.CopyMixture(string_probability=string_probability, segment_length=(3, 9),
                                      gap_length=(0, 20))
    rng = random.Random(0)
    text = synthetic_text()
    for _ in range(50):
        window, copied = pretraining.copy_window(rng, text, 200, mixture)
        assert len(window) == len(copied) == 200
        assert all(0 <= b < 256 for b in window)
        assert sum(copied) > 20  # dense: many predictable bytes in every window
    # Rebuild one window's structure: each marked byte equals the byte one segment+gap earlier.
    rng = random.Random(1)
    state = rng.getstate()
    window, copied = pretraining.copy_window(rng, text, 400, mixture)
    rng.setstate(state)
    position = 0
    while position < 400:
        n = rng.randint(*mixture.segment_length)
        first = rng.random() < mixture.string_probability
        if first:
            [rng.choice(mixture.alphabet) for _ in range(n)]
        else:
            rng.randrange(len(text) - n)
        g = rng.randint(*mixture.gap_length)
        if mixture.string_probability >= 1.0:
            [rng.choice(mixture.alphabet) for _ in range(g)]
        elif g:
            rng.randrange(len(text) - g)
        repeat = position + n + g
        for i in range(n):
            if repeat + i < 400:
                assert window[repeat + i] == window[position + i]
                assert copied[repeat + i] == (1 if i > 0 else 0)
        position = repeat + n


def test_training_batch_starts_with_bos_and_shifts_labels():
    rng = random.Random(0)
    inputs, labels, copied = pretraining.training_batch(rng, synthetic_text(), 24, 5, pretraining.CopyMixture())
    assert inputs.shape == labels.shape == copied.shape == (5, 24)
    assert (inputs[:, 0] == pretraining.BOS_ID).all()
    assert torch.equal(inputs[:, 1:], labels[:, :-1])


def test_byte_tokenizer_round_trips_bytes_and_adds_bos(tmp_path):
    tokenizer = pretraining.byte_tokenizer()
    text = "pass key: 71432. café"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == pretraining.BOS_ID and ids[1:] == list(text.encode())
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text)["input_ids"] == ids


def test_pretrain_is_deterministic_and_learns(monkeypatch):
    setup = tiny_setup(stages=(pretraining.Stage(16, 30, 8, pretraining.CopyMixture()),), lr=1e-2)
    curves = []
    for _ in range(2):
        torch.manual_seed(0)
        model = LlamaRopeIDForCausalLM(RopeIDConfig(**pretraining.model_config_kwargs(setup),
                                                    rope_parameters={"rope_type": "rope_id", "training_length": 32,
                                                                     "shortest_period": 4.0}))
        curves.append(pretraining.pretrain(model, setup, 0, synthetic_text())["curve"])
    assert curves[0] == curves[1]
    assert curves[0][-1][1] < curves[0][0][1] - 0.5  # the loss falls from ln(260)
    assert all(math.isfinite(loss) for _, loss, _ in curves[0])


def test_toy_source_checkpoint_is_a_plain_llama_folder_built_once(tmp_path, monkeypatch):
    monkeypatch.setattr(pretraining, "shakespeare_split", lambda: (synthetic_text(), synthetic_text()[:2000]))
    setup = tiny_setup()
    folder = pretraining.toy_source_checkpoint(seed=3, setup=setup, out=tmp_path / "source")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["rope_parameters"]["rope_type"] == "default"
    assert "auto_map" not in config  # an ordinary checkpoint: no remote code
    record = json.loads((folder / "pretraining.json").read_text())
    assert record["seed"] == 3 and record["tokens"] == setup.tokens
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tokenizer("to be or")["input_ids"]])
    assert torch.isfinite(model(ids).logits).all()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(pretraining, "pretrain",
                        lambda *a, **k: calls.append(1) or {"curve": [], "seconds_per_step": 0.0})
    assert pretraining.toy_source_checkpoint(seed=3, setup=setup, out=folder) == folder  # reused, not retrained
    assert not calls and (folder / "model.safetensors").stat().st_mtime_ns == stamp
    pretraining.toy_source_checkpoint(seed=3, setup=replace(setup, lr=1e-3), out=folder)  # other settings: rebuilt
    assert calls == [1] and json.loads((folder / "pretraining.json").read_text())["setup"]["lr"] == 1e-3
    assert not list(tmp_path.glob(".*partial*"))


def test_toy_sources_of_other_shapes_or_curricula_never_share_the_default_folder():
    default = pretraining.PretrainSetup()
    assert pretraining.toy_source_name(0, default) == "toy-rope-L128-seed0"
    names = {pretraining.toy_source_name(0, setup) for setup in (
        default, replace(default, head_dim=16), replace(default, width=128),
        replace(default, stages=pretraining.COPY_FIRST_STAGES), replace(default, stages=default.stages[:1]))}
    assert len(names) == 5
    assert pretraining.toy_source_name(1, replace(default, head_dim=16)) == "toy-rope-L128-3x64h4-seed1"
    assert pretraining.toy_source_name(0, replace(default, stages=pretraining.COPY_FIRST_STAGES)).endswith(
        "-copy-first-seed0")


# ----------------------------------------------------------------------------------------------
# temperature "ssmax" and temperature_channels "unrotated"


def test_ssmax_temperature_is_log_position_over_log_length_at_every_position():
    positions = torch.tensor([0, 1, 9, 63, 255])  # 0-based
    got = query_temperature(positions, 64, "ssmax")
    expected = torch.tensor([math.log(2), math.log(2), math.log(10), math.log(64), math.log(256)]) / math.log(64)
    torch.testing.assert_close(got, expected)


def test_unrotated_temperature_scales_only_the_nope_channels():
    p = RopeIDParameters(head_dim=16, training_length=32, shortest_period=4.0, temperature="length_log",
                         temperature_channels="unrotated")
    q = torch.randn(1, 2, 3, 16)
    positions = torch.tensor([[5, 100, 1000]])
    out = scale_queries(q, positions, p)
    n, half = p.num_rotated_pairs, 8
    rotated = torch.zeros(16, dtype=torch.bool)
    rotated[:n] = rotated[half:half + n] = True
    torch.testing.assert_close(out[..., rotated], q[..., rotated])
    scale = query_temperature(positions[0], 32, "length_log")
    torch.testing.assert_close(out[..., ~rotated], q[..., ~rotated] * scale[None, None, :, None])
    everything = scale_queries(q, positions, replace(p, temperature_channels="all"))
    torch.testing.assert_close(everything, q * scale[None, None, :, None])


def test_unrotated_temperature_changes_logits_only_through_the_nope_channels():
    def logits(**rope):
        torch.manual_seed(0)
        config = RopeIDConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
                              rope_parameters={"rope_type": "rope_id", "training_length": 16, "shortest_period": 4.0,
                                               **rope})
        model = LlamaRopeIDForCausalLM(config).eval()
        ids = torch.randint(0, 64, (1, 80), generator=torch.Generator().manual_seed(1))
        return model(ids).logits

    plain = logits(temperature="none")
    unrotated = logits(temperature="length_log", temperature_channels="unrotated")
    inside = 16
    torch.testing.assert_close(unrotated[:, :inside], plain[:, :inside])  # exactly 1 inside L
    assert not torch.allclose(unrotated[:, inside:], plain[:, inside:])
    # With every pair rotated there is no unrotated channel: the temperature has nothing to scale.
    all_rotated = dict(rotary_fraction=1.0, spectrum="original")
    torch.testing.assert_close(logits(temperature="length_log", temperature_channels="unrotated", **all_rotated),
                               logits(temperature="none", **all_rotated))


def test_unknown_temperature_channels_is_refused_with_the_accepted_values():
    with pytest.raises(ValueError, match="temperature_channels 'keys'.*all, unrotated"):
        RopeIDParameters(head_dim=16, training_length=32, shortest_period=4.0, temperature_channels="keys")


# ----------------------------------------------------------------------------------------------
# Report shapes of the two benchmarks (the summary.json contract)


def load(name):
    return load_benchmark(name)


def test_toy_retrieval_report_writes_the_summary_contract(tmp_path):
    toy = load("toy_retrieval")
    for seed in (0, 1, 2):
        results = {name: {str(m): {"tail_loss": 1.5 + seed * 0.01 + m * 0.001, "retrieval": 0.9 - m * 0.01,
                                   "multikey": 0.5, "retrieval_by_depth": {"0.0": 1.0, "0.75": seed / 4}}
                          for m in toy.MULTIPLES}
                   for name in ("rope", "rope+yarn", "p_rope_win64+lenlog_nope")}
        record = {"seed": seed, "setup": {"training_length": 128}, "pretraining_tokens": 1000,
                  "training": {"seconds_per_step": 0.1}, "results": results}
        (tmp_path / "runs").mkdir(exist_ok=True)
        (tmp_path / "runs" / f"x-seed{seed}.json").write_text(json.dumps(record))
    toy.report(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    row = summary["configurations"]["rope+yarn"]
    assert row["seeds"] == 3 and set(row) == {"seeds", "1", "2", "4", "8", "16"}
    assert row["1"]["tail_loss"] == pytest.approx(1.5 + 0.01 + 0.001)  # mean over seeds 0, 1, 2
    assert row["16"]["retrieval"] == pytest.approx(0.74)
    assert (tmp_path / "retrieval_vs_length.png").stat().st_size > 1000
    assert "± " in (tmp_path / "results.md").read_text()
    by_depth = json.loads((tmp_path / "summary_full.json").read_text())["configurations"]["rope"]["16"]
    assert by_depth["retrieval_by_depth"] == {"0.0": 1.0, "0.75": pytest.approx(0.25)}  # (0 + 1/4 + 2/4) / 3
    assert "| rope | 1.00 | 0.25 |" in (tmp_path / "results.md").read_text()


def test_conversion_route_report_writes_the_summary_contract(tmp_path):
    route = load("conversion_route")
    for seed in (0, 1):
        arms = {arm: {"budget_tokens": 100, **{str(m): {"ppl": 3.0 + seed, "tail_ppl": 3.5, "retrieval": 0.5,
                                                          "multikey": None if m == 16 else 0.25}
                                                for m in route.MULTIPLES}}
                for arm in ("source", "yarn_oracle", "yarn_lora", "rope_id_lora")}
        (tmp_path / "runs").mkdir(exist_ok=True)
        (tmp_path / "runs" / f"seed{seed}.json").write_text(json.dumps(
            {"seed": seed, "default_recipe": "far-context", "training_length": 128, "source_pretraining": 5000, "arms": arms}))
    route.report(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["arms"]) == {"source", "yarn_oracle", "yarn_lora", "rope_id_lora"}
    cell = summary["arms"]["rope_id_lora"]["2"]
    assert cell == {"ppl": 3.5, "tail_ppl": 3.5, "retrieval": 0.5, "multikey": 0.25}
    assert summary["arms"]["source"]["16"]["multikey"] is None
    assert summary["arms"]["yarn_lora"]["budget_tokens"] == 100
    assert (tmp_path / "retrieval_vs_length.png").exists()


def test_toy_retrieval_goal_check_is_seed_by_seed():
    toy = load("toy_retrieval")

    def row(ret1, ret16, tail1, tail16, mid_ret=0.5, mid_tail=1.0):
        cells = {"1": {"retrieval": ret1, "tail_loss": tail1}, "16": {"retrieval": ret16, "tail_loss": tail16}}
        cells.update({str(m): {"retrieval": mid_ret, "tail_loss": mid_tail} for m in (2, 4, 8)})
        return cells

    per_config = {
        "rope": {0: row(0.9, 0.0, 1.000, 3.0), 1: row(0.9, 0.0, 1.000, 3.0)},
        "rope+yarn": {0: row(0.9, 0.0, 1.000, 2.0, 0.1, 1.5), 1: row(0.9, 0.0, 1.000, 2.0, 0.1, 1.5)},
        "good": {0: row(0.95, 0.9, 1.004, 1.05), 1: row(0.92, 0.85, 1.003, 1.04)},
        "one_seed_short": {0: row(0.95, 0.9, 1.004, 1.05), 1: row(0.95, 0.5, 1.003, 1.04)},
        "worse_inside": {0: row(0.95, 0.9, 1.010, 1.05), 1: row(0.95, 0.9, 1.010, 1.05)},
    }
    goal = toy.goal_check(per_config)
    assert goal["good"]["met"] and goal["good"]["retrieval_kept_16x"] == "2/2"
    assert not goal["one_seed_short"]["met"] and goal["one_seed_short"]["retrieval_kept_16x"] == "1/2"
    assert not goal["worse_inside"]["met"] and goal["worse_inside"]["inside_L_vs_rope"] == "0/2"
    assert not goal["rope+yarn"]["met"]  # cannot beat itself
