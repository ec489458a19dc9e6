"""The command line as a whole: shared RoPE-ID options, one error format and exit code, extras, module entry."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from hf_ropeid.cli import app
from hf_ropeid.errors import MissingDependencyError, require
from hf_ropeid.parameters import ROPE_ID_OPTION_KEYS


def option_names(command: str) -> set[str]:
    click_command = typer.main.get_command(app).commands[command]
    return {name for parameter in click_command.params for name in parameter.opts}


def test_convert_and_finetune_accept_every_rope_id_parameter_under_its_key_name():
    expected = {"--" + key.replace("_", "-") for key in ROPE_ID_OPTION_KEYS}
    assert len(expected) == 12  # rope_theta and the 11 frozen rope_parameters keys
    for command in ("convert", "finetune"):
        names = option_names(command)
        assert expected <= names, (command, expected - names)
        assert {"--train-length", "--turns"} <= names  # old spellings, hidden
    help_text = CliRunner().invoke(app, ["convert", "--help"]).output
    assert "--training-length" in help_text and "--train-length" not in help_text


def test_user_errors_exit_2_with_one_line_and_debug_shows_the_traceback(tmp_path, monkeypatch):
    missing = ["merge", str(tmp_path / "no-adapter"), str(tmp_path / "out")]
    result = CliRunner().invoke(app, missing)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "not a peft adapter folder" in result.stderr
    assert "Traceback" not in result.output
    debug = CliRunner().invoke(app, ["--debug", *missing])
    assert debug.exit_code == 1 and type(debug.exception).__name__ == "MergeError"
    monkeypatch.setenv("HF_ROPEID_DEBUG", "1")
    assert type(CliRunner().invoke(app, missing).exception).__name__ == "MergeError"


def test_option_parse_errors_name_the_option(tmp_path):
    result = CliRunner().invoke(app, ["convert", str(tmp_path), str(tmp_path / "out"), "--verify-lengths", "1"])
    assert result.exit_code == 2 and "error: --verify-lengths: give at least one length of 2 tokens" in result.stderr
    both = CliRunner().invoke(app, ["convert", str(tmp_path), str(tmp_path / "o"), "--train-length", "8",
                                    "--training-length", "16"])
    assert both.exit_code == 2 and "--train-length is the old name of --training-length" in both.stderr


def test_a_missing_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # makes `import peft` fail
    with pytest.raises(MissingDependencyError, match=r"pip install 'hf-ropeid\[train\]'"):
        require("peft", "train", "LoRA training")


def test_python_dash_m_runs_the_command_line():
    done = subprocess.run([sys.executable, "-m", "hf_ropeid.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "finetune" in done.stdout


def test_recipe_is_an_option_of_convert_and_finetune_and_an_unknown_one_is_one_line(tmp_path):
    from hf_ropeid.training import FinetuneArguments

    for command in ("convert", "finetune"):
        assert "--recipe" in option_names(command)
    result = CliRunner().invoke(app, ["convert", "missing-model", str(tmp_path / "out"), "--recipe", "long"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()
    arguments = FinetuneArguments.from_flat(model="m", data=["d"], output_dir="o", recipe="far-context")
    assert arguments.conversion.rope_id_parameters()["recipe"] == "far-context"
