"""hf_ropeid.atomic: write beside, then swap; the old target survives every failure; one --force rule."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from hf_ropeid.atomic import TargetExistsError, atomic_directory, atomic_file, check_target, write_json_atomic


def siblings(path):
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith("."))


def test_a_folder_appears_only_when_complete(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as partial:
        (partial / "a.txt").write_text("new")
        assert partial.name.startswith(".out.partial-") and not target.exists()
    assert (target / "a.txt").read_text() == "new" and siblings(target) == []
    assert oct(target.stat().st_mode & 0o777) == "0o755"


def test_force_replaces_and_a_failure_keeps_the_old_folder(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(TargetExistsError, match="exists and is not empty; pass --force"):
        check_target(target, force=False)
    with pytest.raises(TargetExistsError):
        with atomic_directory(target) as partial:
            (partial / "a.txt").write_text("new")
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(target, force=True) as partial:
            (partial / "a.txt").write_text("new")
            raise KeyboardInterrupt
    assert (target / "keep.txt").read_text() == "old" and siblings(target) == []
    with atomic_directory(target, force=True) as partial:
        (partial / "a.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"] and siblings(target) == []


def test_an_empty_folder_is_replaced_without_force(tmp_path):
    (tmp_path / "out").mkdir()
    check_target(tmp_path / "out", force=False)
    with atomic_directory(tmp_path / "out") as partial:
        (partial / "a.txt").write_text("x")
    assert (tmp_path / "out" / "a.txt").is_file()


def test_files_are_swapped_in_whole(tmp_path):
    path = tmp_path / "card.md"
    path.write_text("old")
    with pytest.raises(OSError):
        with atomic_file(path) as partial:
            partial.write_text("half")
            raise OSError("disk full (simulated)")
    assert path.read_text() == "old" and siblings(path) == []
    write_json_atomic(path, {"a": 1})
    assert path.read_text() == '{\n  "a": 1\n}\n' and siblings(path) == []


def test_sigterm_removes_the_partial_folder_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    script = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from hf_ropeid.atomic import atomic_directory
        with atomic_directory(Path({str(target)!r}), force=True) as partial:
            (partial / "a.txt").write_text("new")
            os.kill(os.getpid(), signal.SIGTERM)
            sys.exit("not reached")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert (target / "keep.txt").read_text() == "old" and siblings(target) == []
