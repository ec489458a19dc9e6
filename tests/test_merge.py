"""hf_ropeid.merge: adapter + base -> one RoPE-ID checkpoint (remote code, card), atomic, pushable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from hf_ropeid.atomic import TargetExistsError
from hf_ropeid.merge import MergeError, merge_adapter
from hf_ropeid.training import train

from conftest import HIDE_PACKAGE
from test_training import arguments, save_rope_id_base, write_corpus


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny RoPE-ID base with tied embeddings, and an adapter that also trains embeddings and norms."""
    root = tmp_path_factory.mktemp("merge")
    base = save_rope_id_base(root / "base", tie_word_embeddings=True)
    corpus = write_corpus(root / "corpus", words=80)
    result = train(arguments(base, corpus, root / "run", max_steps=3, train_embeddings_and_norms=True, lora_dropout=0.0))
    ids = torch.randint(0, 256, (2, 150))  # past L = 128: spectrum and temperature both matter
    with torch.no_grad():
        expected = result["model"].eval()(ids).logits
    return SimpleNamespace(root=root, base=base, adapter=root / "run" / "adapter", ids=ids, expected=expected)


def test_merged_checkpoint_matches_the_adapter_and_keeps_rope_settings(trained, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    out = merge_adapter(trained.adapter, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(trained.ids).logits, trained.expected, rtol=0, atol=1e-4)
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()  # still tied

    config = json.loads((out / "config.json").read_text())
    base_config = AutoConfig.from_pretrained(trained.base)
    assert config["model_type"] == "llama_rope_id" and config["rope_parameters"] == base_config.rope_parameters
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    length = config["rope_parameters"]["training_length"]
    assert config["max_position_embeddings"] == 16 * length  # the serving length; L is unchanged
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 16 * length
    assert {"modeling_rope_id.py", "configuration_rope_id.py", "rope_id.py", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    card = (out / "README.md").read_text()
    record = json.loads((out / "finetuning.json").read_text())
    assert record["steps"] == 3 and record["training"]["train_embeddings_and_norms"] is True
    assert "fine-tuned with LoRA" in card and "LoRA r=4, alpha=8 on q_proj" in card and "3 x 1 x 32" in card
    assert f"{record['final_eval']['eval_ppl@64']:.2f}" in card


def test_adapter_and_merged_model_load_where_the_package_is_missing(trained, tmp_path):
    out = merge_adapter(trained.adapter, tmp_path / "merged")
    torch.save({"ids": trained.ids, "expected": trained.expected}, tmp_path / "expected.pt")
    code = HIDE_PACKAGE + textwrap.dedent(
        f"""
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        data = torch.load({str(tmp_path / "expected.pt")!r})
        base = AutoModelForCausalLM.from_pretrained({str(trained.base)!r}, trust_remote_code=True)
        assert type(base).__module__.startswith("transformers_modules"), type(base).__module__
        adapted = PeftModel.from_pretrained(base, {str(trained.adapter)!r}).eval()
        merged = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            torch.testing.assert_close(adapted(data["ids"]).logits, data["expected"], rtol=0, atol=1e-5)
            torch.testing.assert_close(merged(data["ids"]).logits, data["expected"], rtol=0, atol=1e-4)
        print("OK")
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-3000:]


@pytest.mark.parametrize("overrides", [dict(num_hidden_layers=3), dict(hidden_size=32, intermediate_size=64)])
def test_adapter_that_does_not_fit_the_base(trained, tmp_path, overrides):
    other = save_rope_id_base(tmp_path / "other", tie_word_embeddings=True, **overrides)
    with pytest.raises(MergeError, match="does not match the base"):
        merge_adapter(trained.adapter, tmp_path / "merged", base=str(other))
    assert not (tmp_path / "merged").exists()


def test_no_overwrite_without_force_and_no_half_written_folder(trained, tmp_path, monkeypatch):
    from hf_ropeid import LlamaRopeIDForCausalLM

    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "keep.txt").write_text("mine")
    with pytest.raises(TargetExistsError, match="not empty; pass --force"):
        merge_adapter(trained.adapter, tmp_path / "merged")

    def crash(self, *args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(LlamaRopeIDForCausalLM, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        merge_adapter(trained.adapter, tmp_path / "merged", force=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial folder left
    assert (tmp_path / "merged" / "keep.txt").read_text() == "mine"  # the old folder is untouched


def test_a_folder_without_adapter_config_is_refused(tmp_path):
    with pytest.raises(MergeError, match="not a peft adapter folder"):
        merge_adapter(tmp_path, tmp_path / "out")


class RecordingApi:
    def __init__(self, *args, **kwargs):
        self.calls = []
        RecordingApi.last = self

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        readme = open(os.path.join(kwargs["folder_path"], "README.md")).read()
        self.calls.append(("upload_folder", kwargs["repo_id"], readme))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc", pr_url=None)


def test_merge_command_pushes_a_card_naming_the_repo_and_exits_2_on_errors(trained, tmp_path, monkeypatch):
    import huggingface_hub

    from hf_ropeid.cli import app

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    runner = CliRunner()
    done = runner.invoke(app, ["merge", str(trained.adapter), str(tmp_path / "merged"), "--push-to-hub", "me/tiny-lora",
                               "--base-model", "me/tiny"])
    assert done.exit_code == 0, done.output
    assert "https://huggingface.co/me/tiny-lora/commit/abc" in done.output
    calls = RecordingApi.last.calls
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"] and calls[0][2]["private"] is True
    readme = calls[1][2]
    assert 'model_id = "me/tiny-lora"' in readme and "base_model: me/tiny" in readme

    bad = runner.invoke(app, ["merge", str(tmp_path), str(tmp_path / "x")])
    assert bad.exit_code == 2 and "error: " in bad.output and "not a peft adapter folder" in bad.output


def test_a_later_push_renders_the_merged_card_for_its_repo(trained, tmp_path):
    from hf_ropeid.hub import push_to_hub

    from test_hub import RecordingApi as FakeApi

    out = merge_adapter(trained.adapter, tmp_path / "merged", base_model="me/tiny")  # merged without naming a repo
    assert 'model_id = "me/later"' not in (out / "README.md").read_text()
    push_to_hub(out, "me/later", api=FakeApi())
    card = (out / "README.md").read_text()
    assert 'model_id = "me/later"' in card and "fine-tuned with LoRA" in card
    assert "base_model: me/tiny" in card  # what was given at merge time survives the re-render
    assert not list(out.glob(".README*"))  # no partial file left behind
