"""Push a converted checkpoint folder to the Hugging Face Hub (create_repo + upload_folder).

The ``HfApi`` is injectable, so tests pass a recording fake; without one, ``HfApi(token=token)``
uses the usual token (``HF_TOKEN`` or ``hf auth login``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .atomic import write_text_atomic
from .errors import HfRopeIDError
from .model_card import FINETUNING_RECORD, write_finetuned_model_card, write_model_card


class HubError(HfRopeIDError, RuntimeError):
    """The folder cannot be pushed, or the Hub refused; the message says why."""


def check_pushable(folder: Path) -> None:
    if not folder.is_dir():
        raise HubError(f"{folder} is not a folder.")
    missing = [name for name in ("config.json", "README.md") if not (folder / name).is_file()]
    if not list(folder.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise HubError(
            f"{folder} is not a complete checkpoint (missing {', '.join(missing)}); convert it first with `hf-ropeid convert`."
        )


def _is_rope_id(folder: Path) -> bool:
    import json

    return json.loads((folder / "config.json").read_text()).get("model_type") == "llama_rope_id"


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = True,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    api: Any = None,
    token: str | None = None,
) -> str:
    """Creates ``repo_id`` if needed (``private``, exist_ok) and uploads ``folder``; returns the commit or PR URL.

    A folder written by the converter (conversion.json) or by ``hf-ropeid merge`` from a RoPE-ID base
    (finetuning.json) gets its README.md re-rendered first, so the card's usage snippet names ``repo_id``.
    The repo id is validated before that, and if the upload fails (offline, refused, interrupted) the
    local README.md is put back byte for byte: only a successful push changes it.
    ``revision``: a branch, created if missing; ``create_pr``: open a pull request against the default
    branch instead of committing to it.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    check_pushable(folder)
    check_repo_id(repo_id)
    if create_pr and revision not in (None, "main"):
        raise HubError("create_pr opens a pull request against the default branch; do not combine it with a revision.")
    card = folder / "README.md"
    original_card = card.read_bytes()
    api = api if api is not None else HfApi(token=token)
    message = commit_message or f"Upload {folder.name} (RoPE-ID conversion by hf-ropeid)"
    pushed = False
    try:
        if (folder / "conversion.json").is_file():
            write_model_card(folder, repo_id=repo_id, revision=revision or "main")
        elif (folder / FINETUNING_RECORD).is_file() and _is_rope_id(folder):
            write_finetuned_model_card(folder, repo_id=repo_id, revision=revision or "main")
        commit = _upload(api, folder, repo_id, private, revision, message, create_pr)
        pushed = True
    finally:
        if not pushed and card.read_bytes() != original_card:
            write_text_atomic(card, original_card)  # nothing was uploaded: the local card stays as it was
    return getattr(commit, "pr_url", None) or getattr(commit, "commit_url", None) or str(commit)


def check_repo_id(repo_id: str) -> None:
    """Raises HubError unless ``repo_id`` is a valid Hub model id (``name`` or ``namespace/name``)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise HubError(f"{repo_id!r} is not a valid Hub repo id ({error}); use e.g. your-name/model-name.") from None


def _upload(api: Any, folder: Path, repo_id: str, private: bool, revision, message: str, create_pr: bool):
    from huggingface_hub.errors import HFValidationError

    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision not in (None, "main") and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            revision=revision,
            commit_message=message,
            create_pr=create_pr,
            ignore_patterns=[".*"],  # staging leftovers and editor files
        )
    except (OSError, HFValidationError) as error:  # offline, no token, HTTP errors, bad repo id
        raise HubError(f"Pushing {folder} to {repo_id} failed: {type(error).__name__}: {error}") from error
    return commit
