"""Dry run of the conversion-route benchmark (convert -> finetune -> merge -> eval, the project's own commands)
on a tiny Llama at tiny lengths: the GPU script runs this same code with real sizes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from hf_ropeid import pretraining

from conftest import load_benchmark

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "conversion_route.py"


def test_route_runs_every_arm_with_the_same_budget_and_writes_the_summary(tiny_llama_dir, tmp_path, monkeypatch):
    words = b" ".join([b"to be or not to be that is the question"] * 400)
    monkeypatch.setattr(pretraining, "shakespeare_split", lambda: (words, words[:6000]))
    route = load_benchmark("conversion_route", "conversion_route")
    out = tmp_path / "route"
    route.main(["--source", str(tiny_llama_dir), "--training-length", "128", "--multiples", "1,2",
                "--lora-steps", "2", "--lora-batch", "2", "--seeds", "0", "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    arms = summary["arms"]
    assert {"source", "yarn_oracle", "yarn_lora", "rope_id_lora", "portable_lora"} <= set(arms)
    budgets = {arm: row["budget_tokens"] for arm, row in arms.items()}
    assert budgets["source"] == budgets["yarn_oracle"] == 0
    assert budgets["yarn_lora"] == budgets["rope_id_lora"] == budgets["portable_lora"] == 2 * 2 * 128  # steps x batch x L
    # The converter's default is the far-context recipe; --recipe portable has no window.
    far = json.loads((out / "work" / "seed0" / "rope_id_lora-merged" / "config.json").read_text())
    assert far["rope_parameters"]["rotary_window"] == 64 and far["rope_parameters"]["temperature"] == "length_log"
    portable = json.loads((out / "work" / "seed0" / "portable_lora-merged" / "config.json").read_text())
    assert portable["rope_parameters"].get("rotary_window") is None
    for row in arms.values():
        assert set(row) >= {"1", "2"} and row["1"]["ppl"] > 1 and row["2"]["retrieval"] is not None
    assert far["rope_parameters"]["rope_type"] == "rope_id" and far["rope_parameters"]["training_length"] == 128
    yarn = json.loads((out / "work" / "seed0" / "yarn_lora-merged" / "config.json").read_text())
    assert yarn["rope_parameters"]["rope_type"] == "yarn" and yarn["rope_parameters"]["factor"] == 2.0
    assert (out / "results.md").exists() and (out / "retrieval_vs_length.png").exists()


def test_arms_selects_the_arms_that_run_beside_the_baselines(tiny_llama_dir, tmp_path, monkeypatch):
    words = b" ".join([b"to be or not to be that is the question"] * 400)
    monkeypatch.setattr(pretraining, "shakespeare_split", lambda: (words, words[:6000]))
    route = load_benchmark("conversion_route", "conversion_route")
    out = tmp_path / "route"
    common = ["--source", str(tiny_llama_dir), "--training-length", "128", "--multiples", "1,2", "--lora-steps", "1",
              "--lora-batch", "1", "--seeds", "0", "--out", str(out)]
    # ssmax_lora is a toy-source arm: a real model's CPU budget runs only yarn_lora and two conversions.
    with pytest.raises(SystemExit, match="unknown arm.*no_such_arm, ssmax_lora for this source; "
                                         "accepted: yarn_lora, rope_id_lora, portable_lora.$"):
        route.main([*common, "--arms", "portable_lora,no_such_arm,ssmax_lora"])
    assert not (out / "work").exists()  # refused before anything ran
    route.main([*common, "--arms", "portable_lora"])
    assert set(json.loads((out / "summary.json").read_text())["arms"]) == {"source", "yarn_oracle", "portable_lora"}
    assert sorted(p.name for p in (out / "work" / "seed0").glob("*-merged")) == ["portable_lora-merged"]


def test_toy_lora_data_packs_into_blocks_that_each_start_with_bos(tmp_path, monkeypatch):
    """The toy attends to BOS as its sink: LoRA blocks without it took the source's passkey from 88% to 6%."""
    from hf_ropeid.data import DataSource, build_training_blocks

    words = b" ".join([b"to be or not to be that is the question"] * 400)
    monkeypatch.setattr(pretraining, "shakespeare_split", lambda: (words, words[:6000]))
    spec = importlib.util.spec_from_file_location("conversion_route_data", SCRIPT)
    route = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, route)
    spec.loader.exec_module(route)
    monkeypatch.setattr(route, "LORA_DATA_WINDOWS", 40)
    setup = pretraining.PretrainSetup()
    path = route.lora_data(tmp_path, setup)
    L = setup.training_length
    blocks, _ = build_training_blocks(DataSource(paths=(str(path),)), pretraining.byte_tokenizer(), L, seed=0)
    ids = blocks["input_ids"]
    assert len(ids) == 40
    assert all(block[0] == pretraining.BOS_ID and block[-1] == pretraining.EOS_ID for block in ids)


def test_runs_recorded_before_the_default_changed_are_reported_under_todays_names():
    route = load_benchmark("conversion_route", "conversion_route_names")
    old_toy = {"seed": 0, "arms": {"rope_id_lora": "old default", "rope_id_lora_no_temp": "old default, no temp",
                                   "p_rope_window_lora_lenlog": "far-context settings"}}
    arms = route.arms_under_the_current_default(old_toy)["arms"]
    assert arms["portable_lora"] == "old default" and arms["portable_lora_no_temp"] == "old default, no temp"
    assert arms["rope_id_lora"] == arms["p_rope_window_lora_lenlog"] == "far-context settings"
    old_smollm2 = {"seed": 0, "arms": {"rope_id_lora": "old default", "far_context_lora": "recipe"}}
    assert route.arms_under_the_current_default(old_smollm2)["arms"] == {"portable_lora": "old default",
                                                                          "rope_id_lora": "recipe"}
    new = {"seed": 0, "default_recipe": "far-context", "arms": {"rope_id_lora": "new default"}}
    assert route.arms_under_the_current_default(new) == new
