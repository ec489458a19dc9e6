"""Saved checkpoints are self-contained: they load where hf_ropeid is not installed."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import HIDE_PACKAGE, tiny_llama
from hf_ropeid import LlamaRopeIDForCausalLM, RopeIDConfig



def run_hidden(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [sys.executable, "-c", HIDE_PACKAGE + textwrap.dedent(code)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture
def saved_rope_id(tmp_path):
    llama = tiny_llama()
    config = RopeIDConfig.from_llama_config(llama.config, training_length=64, shortest_period=8.0)
    model = LlamaRopeIDForCausalLM(config).eval()
    model.load_state_dict(llama.state_dict())
    path = tmp_path / "ckpt"
    model.save_pretrained(path)
    ids = torch.randint(0, 256, (1, 300))  # beyond L: spectrum and temperature both matter
    with torch.no_grad():
        logits = model(ids).logits
    torch.save({"ids": ids, "logits": logits, "hidden": model.model(ids).last_hidden_state.detach()}, tmp_path / "expected.pt")
    return path


def test_saved_files_are_flat_and_import_nothing_of_the_package(saved_rope_id):
    files = sorted(p.name for p in saved_rope_id.iterdir())
    assert {"configuration_rope_id.py", "modeling_rope_id.py", "rope_id.py", "rotary_window.py", "config.json", "model.safetensors"} <= set(files)
    for name in ("configuration_rope_id.py", "modeling_rope_id.py", "rope_id.py", "rotary_window.py"):
        tree = ast.parse((saved_rope_id / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] in {"torch", "transformers", "packaging", "__future__", "collections", "contextlib", "typing", "math", "dataclasses", "warnings"}, (name, node.module)
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] != "hf_ropeid", name
    config = json.loads((saved_rope_id / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_rope_id.RopeIDConfig",
        "AutoModel": "modeling_rope_id.LlamaRopeIDModel",
        "AutoModelForCausalLM": "modeling_rope_id.LlamaRopeIDForCausalLM",
    }
    assert config["model_type"] == "llama_rope_id" and config["rope_parameters"]["rope_type"] == "rope_id"


def test_fresh_process_without_package_loads_all_auto_classes_with_identical_logits(saved_rope_id, tmp_path):
    result = run_hidden(
        f"""
        import torch
        try:
            import hf_ropeid
            raise SystemExit("hf_ropeid should be hidden")
        except ModuleNotFoundError:
            pass
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
        path = {str(saved_rope_id)!r}
        expected = torch.load({str(tmp_path / 'expected.pt')!r})
        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
        assert type(config).__name__ == "RopeIDConfig", type(config)
        assert type(config).__module__.startswith("transformers_modules"), type(config).__module__
        base = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
        assert type(base).__name__ == "LlamaRopeIDModel"
        lm = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
        assert type(lm).__name__ == "LlamaRopeIDForCausalLM"
        with torch.no_grad():
            assert torch.equal(lm(expected["ids"]).logits, expected["logits"]), "logits differ"
            assert torch.equal(base(expected["ids"]).last_hidden_state, expected["hidden"]), "hidden differ"
        print("REMOTE_OK")
        """,
        tmp_path,
    )
    assert "REMOTE_OK" in result.stdout, result.stdout + result.stderr


def test_clear_import_error_on_transformers_older_than_5(tmp_path):
    env = {**os.environ}
    code = textwrap.dedent(
        """
        import transformers
        transformers.__version__ = "4.57.1"
        try:
            import hf_ropeid
        except ImportError as err:
            print("ERR:", err)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "ERR: RoPE-ID models need transformers>=5.24.0" in result.stdout, result.stdout + result.stderr
    assert "found 4.57.1" in result.stdout


def test_windowed_checkpoint_runs_its_own_attention_without_the_package(tmp_path):
    """rotary_window.py travels with the checkpoint: same logits, and the same refusal of other kernels."""
    llama = tiny_llama()
    config = RopeIDConfig.from_llama_config(
        llama.config, training_length=64, shortest_period=8.0, rotary_window=24, far_field="log_count"
    )
    model = LlamaRopeIDForCausalLM(config).eval()
    model.load_state_dict(llama.state_dict())
    path = tmp_path / "windowed"
    model.save_pretrained(path)
    assert (path / "rotary_window.py").is_file()
    ids = torch.randint(0, 256, (1, 200))  # beyond L: far keys and the far-field bias matter
    with torch.no_grad():
        torch.save({"ids": ids, "logits": model(ids).logits}, tmp_path / "expected.pt")
    result = run_hidden(
        f"""
        import torch
        from transformers import AutoModelForCausalLM
        path = {str(path)!r}
        expected = torch.load({str(tmp_path / 'expected.pt')!r})
        lm = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, attn_implementation="sdpa").eval()
        functions = lm.model.layers[0].self_attn.attention_functions
        assert type(functions).__module__.startswith("transformers_modules"), type(functions).__module__
        assert type(functions).__module__.endswith("rotary_window"), type(functions).__module__
        with torch.no_grad():
            assert torch.equal(lm(expected["ids"]).logits, expected["logits"]), "logits differ"
        try:
            AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, attn_implementation="flex_attention")
        except ValueError as err:
            assert "need attn_implementation 'eager' or 'sdpa'" in str(err), err
        else:
            raise SystemExit("flex_attention was not refused")
        print("REMOTE_WINDOW_OK")
        """,
        tmp_path,
    )
    assert "REMOTE_WINDOW_OK" in result.stdout, result.stdout + result.stderr
