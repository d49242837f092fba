"""What every layer uses and none owns: messages on stderr, files written atomically, file locks and the
differences between what a directory holds and what is asked of it."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import glob
import os
import shutil
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path


def log(msg: str) -> None:
    """A status line for the user on stderr (stdout carries a command's results), above any progress bar."""
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`, unique to this process, renamed over `path` once the block has written
    it: a reader never sees half a file, and an interrupted write leaves `path` as it was."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_atomic(path: Path, text: str) -> None:
    """`path.write_text(text)` (UTF-8), atomically (`replacing`)."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def recover_dir(path: Path) -> list[str]:
    """What a dead writer of `replacing_dir(path)` left beside `path`: the old `path` it had renamed aside is put back
    where `path` is missing (it died between its two renames), anything else removed; returns the names removed."""
    path = Path(path)
    stem = glob.escape(path.name)
    removed = []
    for left in sorted([*path.parent.glob(f"{stem}.tmp-*"), *path.parent.glob(f"{stem}.old-*")]):
        pid = left.name.rpartition("-")[2]
        if not pid.isdigit() or (int(pid) != os.getpid() and _alive(int(pid))):
            continue
        if left.name.startswith(f"{path.name}.old-") and not path.exists():
            left.rename(path)
        else:
            shutil.rmtree(left, ignore_errors=True)
            removed.append(left.name)
    return removed


@contextlib.contextmanager
def replacing_dir(path: Path, replace: bool = True) -> Iterator[Path]:
    """A new directory beside `path`, unique to this process, put in place of `path` once the block has filled it:
    an interrupted block leaves `path` as it was (and its directory removed). Where `path` exists the two are swapped
    in one atomic exchange (Linux's renameat2), so `path` is never missing or half written; where the system cannot
    exchange, the old one is renamed aside first (then `path` is missing for the moment between two renames). With
    `replace` False an existing `path` is kept and the new directory dropped (another process made the same first)."""
    path = Path(path)
    recover_dir(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if not path.exists():
            try:
                tmp.rename(path)
            except OSError:  # made meanwhile by another process
                if replace or not path.exists():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        elif not replace:
            shutil.rmtree(tmp, ignore_errors=True)
        elif _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # it holds the old one now
        else:
            old = path.with_name(f"{path.name}.old-{os.getpid()}")
            path.rename(old)
            try:
                tmp.rename(path)
            except BaseException:
                old.rename(path)
                raise
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (renameat2 with RENAME_EXCHANGE); False where the system cannot."""
    libc = _libc()
    renameat2 = getattr(libc, "renameat2", None) if libc is not None else None
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def try_lock(fd: int, how: int) -> bool:
    """Take an OS file lock (`fcntl.LOCK_EX` or `LOCK_SH`) on `fd` without waiting; False when another process
    holds it. The kernel releases it when its process dies: no stale locks."""
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def differences(have, want, holder: str, where: str = "") -> list[str]:
    """What differs between what `holder` ("index", "run") has and what is asked for, one short line per leaf:
    nested specs are compared field by field, never dumped whole. Where both hold a `config`, differing settings are
    reported without the fields derived from them."""
    def at(key: object) -> str:
        return f"{where}.{key}" if where else str(key)

    if isinstance(have, dict) and isinstance(want, dict):
        settings = differences(have.get("config"), want.get("config"), holder, at("config"))
        if settings:
            return settings
        out = []
        for k in dict.fromkeys([*have, *want]):  # in the holder's order: a model's name before its checkpoints
            out += differences(have.get(k), want.get(k), holder, at(k))
        return out
    if isinstance(have, list) and isinstance(want, list) and len(have) == len(want):
        return [d for i, (x, y) in enumerate(zip(have, want, strict=True))
                for d in differences(x, y, holder, f"{where}[{i}]")]
    if have == want:
        return []
    if have is None or want is None:
        return [f"{where}: {f'asked for, not in the {holder}' if have is None else f'in the {holder}, not asked for'}"]
    return [f"{where}: {holder} has {_short(have)}, asked for {_short(want)}"]


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe_differences(diffs: list[str], shown: int = 3) -> str:
    """The first few differences, and how many more there are."""
    more = f"; and {len(diffs) - shown} more" if len(diffs) > shown else ""
    return "; ".join(diffs[:shown]) + more


def directory_problem(path: Path) -> str | None:
    """Why `path` cannot be an index directory: it is a file, or lies under one; None when it is a directory or can
    be made one (nothing is there yet)."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():  # the nearest thing that is there
            if p.is_dir():
                return None
            kind = "a file" if p.is_file() else "not a directory"
            return f"is {kind}" if p == path else f"lies under {p}, which is {kind}"
    return None


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def release_freed_memory() -> None:
    """Hand the C heap's freed pages back to the system: glibc keeps them for reuse, and a long run of differently
    shaped tensors (a whole-corpus ingest) keeps gigabytes it no longer uses. Trimming after every batch cut the
    high-water mark of featurising 1,500 long LAMA sentences from 7.25 to 5.63 GiB but cost a fifth of the speed;
    ingest trims every TRIM_EVERY batches, which in the same experiment changed neither time nor peak measurably
    (results/scale/README.md#ingest). A no-op without malloc_trim."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is not None:
        trim(0)
