"""Hub push: a recording fake HfApi, and the real HfApi client with its network calls replaced.

HF_HUB_OFFLINE=1 (tests/conftest.py) makes any real network attempt raise, so nothing can leak.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub import HfApi

from hf_ropeid.conversion import convert_checkpoint
from hf_ropeid.hub import HubError, push_to_hub


@pytest.fixture(autouse=True)
def _offline_guard():
    assert huggingface_hub.constants.HF_HUB_OFFLINE, "tests must run with HF_HUB_OFFLINE=1"


class RecordingApi:
    """Records the calls push_to_hub makes; never touches the network."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        pr = "https://huggingface.co/x/discussions/1" if kwargs.get("create_pr") else None
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc", pr_url=pr)


@pytest.fixture
def converted(tiny_llama_dir, tmp_path):
    return convert_checkpoint(tiny_llama_dir, tmp_path / "tiny-rope-id", verify=False)


def test_push_creates_a_private_repo_and_uploads_the_folder(converted):
    api = RecordingApi()
    url = push_to_hub(converted, "me/tiny-rope-id", api=api, commit_message="first")
    assert url == "https://huggingface.co/me/tiny-rope-id/commit/abc"
    (create, repo, create_kwargs), (upload, _, upload_kwargs) = api.calls
    assert (create, repo) == ("create_repo", "me/tiny-rope-id")
    assert create_kwargs["private"] is True and create_kwargs["exist_ok"] is True
    assert upload == "upload_folder" and upload_kwargs["folder_path"] == str(converted)
    assert upload_kwargs["commit_message"] == "first" and upload_kwargs["create_pr"] is False
    assert upload_kwargs["revision"] is None
    # The card's usage snippet now names the repo it was pushed to.
    assert 'model_id = "me/tiny-rope-id"' in (converted / "README.md").read_text()


def test_revision_creates_the_branch_and_pr_returns_its_url(converted):
    api = RecordingApi()
    push_to_hub(converted, "me/x", api=api, revision="v1", private=False)
    assert [c[0] for c in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0][2]["private"] is False
    assert api.calls[1][2]["branch"] == "v1" and api.calls[2][2]["revision"] == "v1"
    api = RecordingApi()
    assert push_to_hub(converted, "me/x", api=api, create_pr=True).endswith("/discussions/1")
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    with pytest.raises(HubError, match="do not combine it with a revision"):
        push_to_hub(converted, "me/x", api=RecordingApi(), create_pr=True, revision="v1")


def test_real_client_uploads_every_file(converted, monkeypatch):
    # The real upload_folder builds the commit; only the network-facing methods are replaced.
    commits, validated = [], []

    class OfflineHfApi(HfApi):
        def create_repo(self, repo_id, **kwargs):
            return f"https://huggingface.co/{repo_id}"

        def _validate_yaml(self, content, **kwargs):  # the Hub checks the card's YAML server-side
            validated.append(content)

        def create_commit(self, repo_id, operations, **kwargs):
            commits.append((repo_id, list(operations), kwargs))
            return SimpleNamespace(commit_url="https://huggingface.co/me/y/commit/1", pr_url=None)

    monkeypatch.setattr(huggingface_hub.hf_api, "is_xet_available", lambda: False)
    (converted / ".editor-swap").write_text("not uploaded")
    push_to_hub(converted, "me/y", api=OfflineHfApi(token="hf_fake"))
    (repo_id, operations, kwargs), = commits
    uploaded = {op.path_in_repo for op in operations}
    expected = {p.name for p in converted.iterdir() if not p.name.startswith(".")}
    assert repo_id == "me/y" and uploaded == expected
    assert {"config.json", "model.safetensors", "modeling_rope_id.py", "README.md"} <= uploaded
    assert kwargs["commit_message"].startswith("Upload tiny-rope-id")
    assert len(validated) == 1 and "rope-id" in validated[0]


def test_offline_push_is_a_clear_error(converted):
    with pytest.raises(HubError, match="failed: OfflineModeIsEnabled"):
        push_to_hub(converted, "me/z")


def test_incomplete_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({}))
    with pytest.raises(HubError, match=r"missing README.md, \*.safetensors"):
        push_to_hub(tmp_path, "me/z", api=RecordingApi())


def test_push_command_offline_exits_2_and_convert_pushes_a_card_naming_the_repo(converted, tiny_llama_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from hf_ropeid.cli import app

    runner = CliRunner()
    offline = runner.invoke(app, ["push", str(converted), "me/z"])
    assert offline.exit_code == 2 and "OfflineModeIsEnabled" in offline.output
    api = RecordingApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: api)
    result = runner.invoke(
        app, ["convert", str(tiny_llama_dir), str(tmp_path / "pushed"), "--no-verify", "--push-to-hub", "me/pushed", "--public"]
    )
    assert result.exit_code == 0, result.output
    assert api.calls[0][:2] == ("create_repo", "me/pushed") and api.calls[0][2]["private"] is False
    assert 'model_id = "me/pushed"' in (tmp_path / "pushed" / "README.md").read_text()
