"""Writing output files safely: build them in a scratch folder, then move them into place.

Outputs are written into a hidden `.onnx_slim.*` folder next to their final
place, checked there, and renamed into place only when complete, so a failure
or a signal leaves no half-written file. Renaming replaces a directory entry:
an existing file (or a hard link to another file) is never written through.
Without `force` a final name is created exclusively, so two runs racing for the
same output cannot silently replace each other. Files and folders are created
with the ordinary modes (0666/0777 less the umask), like any other tool's output.

Scratch folders and folders made for an output are also listed in a registry
while they are in use, so `abandon` can remove them when the process must stop
without unwinding (see `onnx_slim.interrupts`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import stat
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from onnx_slim.errors import UsageError

SCRATCH_PREFIX = ".onnx_slim."

# Folders to remove if the process stops without unwinding: path -> remove its contents too.
_IN_USE: dict[Path, bool] = {}


def _make_scratch_folder(parent: Path) -> Path:
    """A new hidden folder in `parent`, with the umask's mode (tempfile would make it 0700)."""
    while True:
        candidate = parent / f"{SCRATCH_PREFIX}{secrets.token_hex(4)}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue


@contextmanager
def scratch_folder(parent: Path) -> Iterator[Path]:
    """A scratch folder in `parent`, removed with whatever is left in it on exit."""
    folder = _make_scratch_folder(parent)
    _IN_USE[folder] = True
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _IN_USE.pop(folder, None)


def publish(files: Sequence[Path], folder: Path, *, force: bool) -> list[Path]:
    """Move finished `files` into `folder` under their names, in the given order.

    With `force` an existing file is replaced (atomically, not written through).
    Without it each name is created exclusively: if one appeared meanwhile, the
    files already moved are taken back and a UsageError is raised. SIGINT and
    SIGTERM wait until every file is in place (a few renames), so a signal never
    leaves a model without the data files it reads, or a result half moved in.
    """
    placed: list[Path] = []
    with _signals_held():
        try:
            for file in files:
                target = folder / file.name
                if force:
                    check_replaceable(target)  # again: a pipe can appear there while the command works
                    os.replace(file, target)
                else:
                    _create_exclusively(file, target)
                placed.append(target)
        except BaseException as exc:
            if not force:
                for target in placed:  # created by this call, so ours to remove
                    target.unlink()
            if isinstance(exc, FileExistsError):
                raise UsageError(f"{exc.filename2 or exc.filename} exists: pass --force to overwrite it") from None
            raise
    return placed


@contextmanager
def _signals_held() -> Iterator[None]:
    """Delay SIGINT, SIGTERM and SIGHUP (delivered when the block ends) where the platform allows it."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _create_exclusively(file: Path, target: Path) -> None:
    """Rename `file` to `target` unless `target` exists (a hard link fails on an existing name)."""
    try:
        os.link(file, target)
    except FileExistsError:
        raise
    except OSError:
        # No hard links on this filesystem: reserve the name exclusively, then rename over the reservation.
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.replace(file, target)
        return
    file.unlink()  # onnx refuses external data files with several links


@contextmanager
def made_folders(folder: Path, *, remove_contents: bool) -> Iterator[None]:
    """Create `folder` and its missing parents; remove what was created if the block fails.

    The folders made go again with `remove_contents` (the block filled them with
    its own results), else only where empty.
    """
    made = [path for path in [folder, *folder.parents] if not path.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    for path in made:
        _IN_USE[path] = remove_contents and path == folder
    try:
        yield
    except BaseException:
        _remove(made)
        raise
    finally:
        for path in made:
            _IN_USE.pop(path, None)


def abandon() -> None:
    """Remove every scratch folder and every new output folder still in use, deepest first."""
    _remove(sorted(_IN_USE, key=lambda path: len(path.parts), reverse=True))
    _IN_USE.clear()


def _remove(folders: Sequence[Path]) -> None:
    for folder in folders:
        if _IN_USE.get(folder):
            shutil.rmtree(folder, ignore_errors=True)
            continue
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (someone else's files) or already gone


def same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file: the same resolved path, or the same inode (a hard link)."""
    if first.resolve() == second.resolve():
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist
        return False


def check_replaceable(path: Path) -> None:
    """Refuse an output path that exists as something other than a file (or a link, whose entry is
    replaced and whose target is left alone): moving a result into place would replace a device
    (`-o /dev/full --force` turned the machine's /dev/full into an ONNX file) or a pipe."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return  # nothing there (or unreadable: the write will say so)
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISDIR(mode)):
        raise UsageError(f"{path} exists and is not a regular file (a device, a pipe or a socket): "
                         "choose another output path (-o)")
