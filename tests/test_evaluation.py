"""Perplexity vs length, the report, and the ``hf-ropeid eval`` command on tiny models."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hf_ropeid.atomic import TargetExistsError
from hf_ropeid.cli import app
from hf_ropeid.documents import DataError
from hf_ropeid.evaluation import (
    EvalSettings,
    EvaluationError,
    bucket_means,
    default_lengths,
    default_text_paths,
    load_results,
    make_windows,
    perplexity_at_length,
    read_documents,
    resolve_settings,
    results_markdown,
    text_files,
    token_losses,
    token_stream,
    write_lm_eval_tasks,
    write_report,
)

from conftest import byte_tokenizer, tiny_llama

VOCAB = 260
TEXT = "It was the best of times, it was the worst of times, it was the age of wisdom. " * 60


def test_a_uniform_model_has_perplexity_equal_to_the_vocabulary_size():
    model = tiny_llama()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: the uniform distribution over 260 tokens
    windows = torch.randint(0, 256, (5, 96))
    result = perplexity_at_length(model, windows, batch_size=2, position_buckets=4)
    assert result["perplexity"] == pytest.approx(VOCAB, rel=1e-5)
    assert result["tail_perplexity"] == pytest.approx(VOCAB, rel=1e-5)
    assert result["windows"] == 5 and result["tokens"] == 5 * 95
    assert result["position_loss"]["mean"] == pytest.approx([math.log(VOCAB)] * 4, rel=1e-5)


def test_chunked_token_losses_equal_the_model_loss():
    model = tiny_llama(seed=3)
    ids = torch.randint(0, 256, (2, 70))
    losses = token_losses(model, ids, logits_chunk=16)  # 69 predictions in 5 chunks
    with torch.inference_mode():
        logits = model(ids).logits
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-5)


def test_tail_loss_is_the_last_quarter_of_each_window():
    model = tiny_llama(seed=4)
    windows = torch.randint(0, 256, (3, 64))
    losses = token_losses(model, windows)
    result = perplexity_at_length(model, windows)
    assert result["loss"] == pytest.approx(float(losses.double().mean()))
    assert result["tail_loss"] == pytest.approx(float(losses[:, 47:].double().mean()))  # tokens 48..63


def test_windows_are_non_overlapping_and_exact():
    stream = torch.arange(100)
    windows = make_windows(stream, 30, count=5)
    assert windows.tolist() == [list(range(0, 30)), list(range(30, 60)), list(range(60, 90))]
    with_bos = make_windows(stream, 30, count=2, bos_token_id=999)
    assert with_bos[:, 0].tolist() == [999, 999] and with_bos[1, 1:].tolist() == list(range(29, 58))
    with pytest.raises(EvaluationError, match="fewer than one window of 200"):
        make_windows(stream, 200, count=1)


def test_bucket_means_average_positions_per_bucket_and_leave_empty_ones_none():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 4.0, 5.0, 6.0, 7.0]])
    buckets = bucket_means(values, torch.arange(1, 6), length=6, buckets=3)  # positions 1..5 of 6
    assert buckets == {"bucket_start": [0, 2, 4], "bucket_end": [2, 4, 6], "mean": [2.0, 3.5, 5.5]}
    assert bucket_means(torch.ones(2), torch.tensor([0, 5]), 6, 3)["mean"] == [1.0, None, 1.0]


def test_local_text_is_read_by_the_shared_loader_skipping_tests_folders(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.jsonl").write_text('{"text": "beta"}\n\n{"text": "gamma"}\n')
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "skipped.py").write_text("x = 1")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    assert list(read_documents([tmp_path])) == ["alpha", "beta", "gamma"]
    (tmp_path / "bad.jsonl").write_text('{"body": "no text field"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1 has no column 'text'"):
        list(read_documents([tmp_path / "bad.jsonl"]))
    with pytest.raises(DataError, match="accepted text files end in"):
        text_files([tmp_path / "image.png"])
    with pytest.raises(DataError, match="does not exist"):
        text_files([tmp_path / "missing.txt"])
    stream = token_stream(byte_tokenizer(), read_documents([tmp_path]), needed_tokens=3)
    assert byte_tokenizer().decode(stream) == "alpha\n\n"  # stops once it has enough


def test_the_default_text_is_the_standard_library():
    first = next(iter(read_documents(default_text_paths())))
    assert len(first) > 100


def test_settings_defaults_and_refusals():
    assert default_lengths(128) == [64, 128, 256, 512, 1024, 2048]
    config = tiny_llama().config
    settings = resolve_settings(config, EvalSettings())
    assert settings.training_length == 128 and settings.lengths == default_lengths(128)
    assert "yarn" in settings.variants and "rope_id" in settings.variants
    with pytest.raises(EvaluationError, match="Depths are fractions"):
        resolve_settings(config, EvalSettings(depths=[1.5]))
    rope_id_config = tiny_llama().config
    rope_id_config.rope_parameters = {"rope_type": "rope_id", "rope_theta": 10_000.0}
    assert resolve_settings(rope_id_config, EvalSettings()).variants == ["rope_id", "rope_id_no_temp"]
    with pytest.raises(ValueError, match="not available"):
        resolve_settings(rope_id_config, EvalSettings(variants=["ntk"]))


def test_results_markdown_table():
    cell = {"perplexity": 12.345, "tail_perplexity": 15.0}
    results = {
        "training_length": 128,
        "lengths": [64, 128, 256],
        "variants": ["rope", "yarn"],
        "perplexity": {"rope": {"64": cell, "128": cell, "256": {"perplexity": 99.0, "tail_perplexity": None}},
                       "yarn": {"64": cell}},
        "retrieval": {
            "passkey": {"rope": {"64": {"accuracy": None}, "128": {"accuracy": 0.5}, "256": {"accuracy": 1.0}}}
        },
    }
    markdown = results_markdown(results)
    assert "| variant | 64 (L/2) | 128 (L) | 256 (2L) |" in markdown
    assert "| rope | 12.35 | 12.35 | 99.00 |" in markdown
    assert "| yarn | 12.35 | – | – |" in markdown
    assert "| rope | 15.00 | 15.00 | – |" in markdown
    assert "| rope | – | 50% | 100% |" in markdown


def plain(output: str) -> str:
    """CLI output without rich's box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One small end-to-end ``hf-ropeid eval`` on a saved tiny Llama (shared by the tests below)."""
    root = tmp_path_factory.mktemp("eval")
    model_dir = root / "tiny-llama"
    tiny_llama().save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    (root / "book.txt").write_text(TEXT)
    out = root / "report"
    args = ["eval", str(model_dir), "--out", str(out), "--text", str(root / "book.txt"),
            "--lengths", "96,224", "--baselines", "rope,yarn,rope_id", "--tokens-per-length", "320",
            "--samples", "1", "--depths", "0,1", "--tasks", "passkey", "--layers", "1", "--heads", "0,2",
            "--diagnostic-queries", "32", "--position-buckets", "8"]
    result = CliRunner().invoke(app, args)
    return root, out, args, result


def test_eval_command_writes_json_markdown_and_plots(cli_run):
    root, out, _, result = cli_run
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "results.json", "results.md", "perplexity_vs_length.png", "tail_perplexity_vs_length.png",
        "position_loss.png", "retrieval_passkey_heatmap.png", "retrieval_vs_length.png",
        "sink_mass_vs_position.png", "sink_margin_vs_position.png", "cluster_separation_vs_length.png",
    ])
    assert all((out / p).stat().st_size > 1000 for p in ("perplexity_vs_length.png", "retrieval_passkey_heatmap.png"))
    results = json.loads((out / "results.json").read_text())  # strict JSON
    assert results["lengths"] == [96, 224] and results["variants"] == ["rope", "yarn", "rope_id"]
    assert results["rope_parameters"]["yarn"]["224"]["factor"] == pytest.approx(224 / 128)
    assert results["rope_parameters"]["yarn"]["96"]["factor"] == 1.0
    assert results["perplexity"]["rope"]["96"]["windows"] == 4  # ceil(320 / 96)
    assert results["perplexity"]["rope"]["96"] == results["perplexity"]["yarn"]["96"]  # s = 1 inside L
    assert results["retrieval"]["passkey"]["rope"]["96"]["skipped"] == "too short"
    assert results["retrieval"]["passkey"]["rope"]["224"]["samples"] == 2
    assert set(results["diagnostics"]["rope_id"]["224"]["layers"]["1"]) == {"0", "2"}
    assert (out / "results.md").read_text() == results_markdown(results) == results_markdown(load_results(out))
    assert "| rope_id |" in result.output
    assert not [p for p in root.iterdir() if p.name.startswith(".report")]  # no staging folder left


def test_eval_command_refuses_to_overwrite_without_force(cli_run):
    _, out, args, _ = cli_run
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "exists and is not empty; choose another --out or pass --force" in plain(result.output)


def test_write_report_replaces_only_with_force(cli_run):
    root, out, _, _ = cli_run
    results = load_results(out)
    results["model"] = "changed"
    with pytest.raises(TargetExistsError, match="exists and is not empty; choose another --out or pass --force"):
        write_report(results, out)
    write_report(results, out, force=True)
    assert load_results(out)["model"] == "changed"
    assert not [p for p in root.iterdir() if p.name.startswith(".report")]


def test_eval_command_exits_2_on_unknown_baselines_and_bad_lengths(cli_run):
    root, _, _, _ = cli_run
    model_dir = root / "tiny-llama"
    bad = CliRunner().invoke(app, ["eval", str(model_dir), "--out", str(root / "x"), "--baselines", "rope,alibi"])
    assert bad.exit_code == 2 and "Unknown baselines ['alibi']" in plain(bad.output)
    bad = CliRunner().invoke(app, ["eval", str(model_dir), "--out", str(root / "x"), "--lengths", "1k"])
    assert bad.exit_code == 2 and "--lengths must be comma-separated whole numbers" in plain(bad.output)
    assert not (root / "x").exists()


def test_diagnostic_layers_and_heads_are_checked_before_any_work():
    config = tiny_llama().config
    with pytest.raises(EvaluationError, match=r"layers must be in 0..1 and heads in 0..3; got layers \[5\]"):
        resolve_settings(config, EvalSettings(diagnostic_layers=[5]))


def test_lm_eval_tasks_read_only_local_files(tmp_path):
    """The task files lm-eval reads: YAML naming local jsonl files (no dataset download)."""
    import yaml

    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text(("line of plain text\n" * 40))
    written = write_lm_eval_tasks(tmp_path / "tasks", [tmp_path / "text"], passkey_chars=300, depths=(0.0, 1.0))
    assert sorted(p.name for p in written) == [
        "documents.jsonl", "passkey.jsonl", "ropeid_local_passkey.yaml", "ropeid_local_ppl.yaml"
    ]
    for name, output_type in (("ropeid_local_ppl", "loglikelihood_rolling"), ("ropeid_local_passkey", "generate_until")):
        task = yaml.safe_load((tmp_path / "tasks" / f"{name}.yaml").read_text())
        assert task["task"] == name and task["output_type"] == output_type
        assert task["dataset_path"] == "json"
        assert Path(task["dataset_kwargs"]["data_files"]["test"]).is_file()
    records = [json.loads(line) for line in (tmp_path / "tasks" / "passkey.jsonl").read_text().splitlines()]
    assert [r["depth"] for r in records] == [0.0, 1.0]
    for record in records:
        assert f"The pass key is {record['answer']}." in record["prompt"]
        assert record["prompt"].endswith("The pass key is")
