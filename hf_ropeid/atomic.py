"""Write beside, then swap: the one way hf-ropeid writes a folder or a file that someone may read.

Everything goes to a ``.NAME.partial-*`` sibling of the target. Only when it is complete does it
replace the target: the old target (with ``force``) stays intact until then, is moved aside to
``.NAME.old-*`` for the instant of the swap, and is deleted afterwards. On any error, Ctrl-C or
SIGTERM the partial sibling is removed and the old target is left as it was; only a hard kill
(SIGKILL, power loss) can leave a ``.NAME.partial-*`` behind, and it is never read. Its name holds
the writer's host and process id (``.NAME.partial-HOST-PID-*``), so the next write of the same
target removes it once that process is gone (``remove_stale_partials``) and says so.

``--force`` means the same everywhere: replace a target that exists and is not empty. An empty
folder is replaced without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import HfRopeIDError


class TargetExistsError(HfRopeIDError, FileExistsError):
    """The target exists and is not empty, and ``force`` was not given."""


def is_occupied(target: Path) -> bool:
    """Whether ``target`` exists and is something other than an empty folder."""
    target = Path(target)
    if target.is_dir():
        return any(target.iterdir())
    return target.exists() or target.is_symlink()


def check_target(target: str | os.PathLike, force: bool, hint: str = "pass --force to replace it") -> None:
    """Raises TargetExistsError unless ``target`` may be written (free, empty, or ``force``).

    Callers check before any expensive work, so a refusal costs nothing.
    """
    if not force and is_occupied(Path(target)):
        raise TargetExistsError(f"{target} exists and is not empty; {hint}.")


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises SystemExit inside the block (so ``finally`` clauses run), main thread only."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24] or "host"


def partial_prefix(target: Path) -> str:
    """``.NAME.partial-HOST-PID-``: the prefix of this process's partial siblings of ``target``."""
    return f".{target.name}.partial-{_host()}-{os.getpid()}-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_by_owner(path: Path, prefix: str) -> bool | None:
    """Whether ``path`` (named ``prefix + HOST-PID-...``) was left by a process of this host that is gone.

    None when its name does not say (an older format, another host): then it is only reported.
    """
    match = re.match(re.escape(prefix) + r"([A-Za-z0-9]+)-(\d+)-", path.name)
    if not match or match.group(1) != _host():
        return None
    return not _process_alive(int(match.group(2)))


def remove_stale_partials(target: str | os.PathLike) -> list[Path]:
    """Removes ``.NAME.partial-*`` siblings of ``target`` left by interrupted runs on this host; returns them.

    A sibling whose writer is still running is left alone; one whose writer cannot be told (an older
    name, another host) is left and named on stderr.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    removed = []
    for path in sorted(target.parent.glob(f".{glob_escape(target.name)}.partial-*")):
        stale = stale_by_owner(path, f".{target.name}.partial-")
        if stale:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
            print(f"[hf-ropeid] removed {path}, left behind by an interrupted run", file=sys.stderr, flush=True)
        elif stale is None:
            print(
                f"[hf-ropeid] note: {path} looks left behind by an earlier run (not removed: its writer cannot be "
                "told); delete it if no other hf-ropeid run is writing there",
                file=sys.stderr,
                flush=True,
            )
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def partial_path(target: Path, tag: str) -> Path:
    """A fixed ``.NAME.partial-TAG`` sibling: for a folder several processes write into (they must agree on it)."""
    return target.with_name(f".{target.name}.partial-{tag}")


def _swap(partial: Path, target: Path, force: bool) -> None:
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        target.rmdir()
    elif target.exists() or target.is_symlink():
        if not force:
            raise TargetExistsError(f"{target} exists and is not empty; pass --force to replace it.")
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, aside / target.name)
        try:
            os.replace(partial, target)
        except BaseException:
            os.replace(aside / target.name, target)  # put the old one back
            raise
        finally:
            shutil.rmtree(aside, ignore_errors=True)
        return
    os.replace(partial, target)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, *, force: bool = False, partial: Path | None = None) -> Iterator[Path]:
    """Yields an empty ``.NAME.partial-*`` folder beside ``target``; on success it becomes ``target``.

    ``force``: replace a non-empty target (checked again at the swap, after the work). ``partial``:
    a fixed sibling (see ``partial_path``) instead of a fresh random one; a stale one is removed first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if partial is None:
        remove_stale_partials(target)
        partial = Path(tempfile.mkdtemp(prefix=partial_prefix(target), dir=target.parent))
    else:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
    try:
        with _sigterm_raises():
            yield partial
            partial.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
            _swap(partial, target, force)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, *, force: bool = True) -> Iterator[Path]:
    """Yields a ``.NAME.partial-*`` path beside ``target`` to write; on success it replaces ``target``.

    Files are rewritten in place by default (a model card, a log); ``force=False`` refuses an existing one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target)
    handle, name = tempfile.mkstemp(prefix=partial_prefix(target), dir=target.parent)
    os.close(handle)
    partial = Path(name)
    try:
        with _sigterm_raises():
            yield partial
            partial.chmod(0o644)
            if not force and target.exists():
                raise TargetExistsError(f"{target} exists; pass --force to replace it.")
            os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str | bytes) -> Path:
    """Writes ``text`` (str as UTF-8, or bytes) to ``path`` through ``atomic_file``."""
    with atomic_file(path) as partial:
        partial.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, payload: Any, indent: int = 2) -> Path:
    """``payload`` as indented JSON (unknown objects as ``str``) through ``atomic_file``."""
    return write_text_atomic(path, json.dumps(payload, indent=indent, default=str) + "\n")
