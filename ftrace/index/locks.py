"""Who may touch an index directory at once: OS file locks (`fcntl.flock`, Linux/macOS) on two files in it.

- `.write.lock`: held exclusively by `ftrace ingest` for its whole run (`writer`). A second ingest is refused
  at once, before any model work; a reader (`ftrace query`, `bench`, `info`) checks it first (`reading`) and
  refuses while an ingest writes. The file holds the writer's pid and start time, for the message only.
- `.store.lock`: held exclusively while a process has the Qdrant Edge shard open (`StoreLock`; Qdrant Edge
  takes an exclusive WAL lock per shard and has no read-only open). Others wait for it, up to
  `FTRACE_STORE_WAIT_S` seconds (default 60), then fail with one line; so concurrent queries take turns on
  the shard for the seconds each holds it, and a long `ftrace bench` holds it for its whole run.
- `.serve.lock`: held exclusively by `ftrace serve` for its lifetime (`serving`), since it keeps the store
  open. The file holds its pid, URL, device and dtype: `ftrace query` and `ftrace info` ask the server instead
  (`served_by`, `ftrace.query.remote`); a second server and `bench` are refused at once (`reading`), pointed
  at the server's URL.
- `.setup.lock`: `ftrace ingest --shard` processes take turns (`exclusive`, waiting as long as it takes) on
  what they share in the index directory: its manifest, corpus copy and fitted whitening. Each shard holds
  `.write.lock` of its own staging directory (`shards/I-of-N/`) instead of the index's.

The kernel releases a flock when its process dies, so there are no stale locks to clean up; the files stay.

- `.progress.json`: how many of the planned examples an ingest has stored, rewritten atomically after each
  batch (`record_progress`), so a refused reader can say how far the writer is without opening the shard.
  A killed ingest leaves it behind (still true: what was stored before the kill); a complete one removes it.
  A shard records its own in its staging directory; `progress_note` on the index sums the shards'.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ftrace import FtraceError
from ftrace.index.files import (
    ANY_SHARD,
    MANIFEST,
    PROGRESS,
    SERVE_LOCK,
    SETUP_LOCK,
    SHARDS,
    STORE_LOCK,
    WRITE_LOCK,
)
from ftrace.plumbing import directory_problem, try_lock, write_atomic

WAIT_ENV = "FTRACE_STORE_WAIT_S"


class IndexBusyError(FtraceError):
    pass


class IndexPathError(FtraceError):
    pass


def check_directory(index_dir: Path) -> None:
    """Refuse, in one line, an index path that is a file or lies under one: before this module opens a lock file in
    it (which would fail with a traceback)."""
    problem = directory_problem(index_dir)
    if problem:
        raise IndexPathError(f"{index_dir}: {problem}; --index takes a directory (an index, or a new path for "
                             "ingest)")


def store_wait_s() -> float:
    """How long a process waits for another's hold on the vector store (`FTRACE_STORE_WAIT_S`, default 60)."""
    raw = os.environ.get(WAIT_ENV, "60")
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise FtraceError(f"{WAIT_ENV}={raw!r}: give a number of seconds") from None


def _stamp_of(fd: int) -> dict:
    """What a holder wrote into its lock file ({} where unreadable, e.g. mid-write)."""
    try:
        d = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _holder(fd: int) -> tuple[str, str]:
    """The pid and start time a holder wrote into its lock file ('?' where unreadable)."""
    return _pid_since(_stamp_of(fd))


def _pid_since(stamp: dict) -> tuple[str, str]:
    return str(stamp.get("pid", "?")), str(stamp.get("since", "?"))


def _stamp(fd: int, **extra: str) -> None:
    os.ftruncate(fd, 0)
    stamp = {"pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}
    os.pwrite(fd, json.dumps(stamp).encode(), 0)


@contextlib.contextmanager
def writer(index_dir: Path) -> Iterator[None]:
    """Hold `.write.lock` for an ingest, or raise IndexBusyError at once if another process holds it.
    Creates the directory if needed; on exit removes what it created if the ingest wrote no index
    (a refused or failed ingest leaves no directory and no lock file behind)."""
    index_dir = Path(index_dir)
    check_directory(index_dir)
    made = [p for p in (index_dir, *index_dir.parents) if not p.exists()]  # leaf first
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. no permission
        raise IndexPathError(f"{index_dir}: cannot create the index directory ({e.strerror or e})") from None
    path = index_dir / WRITE_LOCK
    made_file = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not try_lock(fd, fcntl.LOCK_EX):
            pid, since = _holder(fd)
            raise IndexBusyError(f"{index_dir}: is being written by pid {pid} since {since}; wait for it to finish")
        _stamp(fd)
        try:
            yield
        finally:
            if made_file and not (index_dir / MANIFEST).exists():  # nothing written: leave no trace
                with contextlib.suppress(OSError):
                    path.unlink()
                for d in made:  # e.g. a shard's INDEX/shards/I-of-N/, and INDEX/shards/ if left empty
                    with contextlib.suppress(OSError):
                        d.rmdir()
    finally:
        os.close(fd)  # releases the lock


def _held_by(index_dir: Path, name: str) -> dict | None:
    """The stamp of the process holding lock file `name` of the directory now, None when none does."""
    try:
        fd = os.open(Path(index_dir) / name, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return None if try_lock(fd, fcntl.LOCK_SH) else _stamp_of(fd)
    finally:
        os.close(fd)


def served_note(index_dir: Path, stamp: dict) -> str:
    """'INDEX: is served by `ftrace serve` (pid N) at URL', the start of every message about a served index."""
    return f"{index_dir}: is served by `ftrace serve` (pid {stamp.get('pid', '?')}) at {stamp.get('url', '?')}"


def _served_error(index_dir: Path, stamp: dict) -> IndexBusyError:
    url = stamp.get("url", "?")
    return IndexBusyError(f"{served_note(index_dir, stamp)}, which holds its vector store; `ftrace query` and "
                          f"`ftrace info` ask it (as POST {url}/trace and GET {url}/info do); stop it to run this")


@contextlib.contextmanager
def serving(index_dir: Path, url: str, device: str, dtype: str) -> Iterator[None]:
    """Hold `.serve.lock` while `ftrace serve` owns this index (its store stays open), or raise IndexBusyError
    at once if another server holds it. The stamp records the server's `url`, `device` and `dtype`, for the
    queries it answers in their place (`served_by`) and the readers it refuses."""
    fd = os.open(Path(index_dir) / SERVE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not try_lock(fd, fcntl.LOCK_EX):
            raise _served_error(index_dir, _stamp_of(fd))
        _stamp(fd, url=url, device=device, dtype=dtype)
        yield
    finally:
        os.close(fd)  # releases the lock


def writing(index_dir: Path) -> tuple[str, str] | None:
    """(pid, start time) of the ingest writing this directory now, or None."""
    stamp = _held_by(index_dir, WRITE_LOCK)
    return None if stamp is None else _pid_since(stamp)


def served_by(index_dir: Path) -> dict | None:
    """The stamp (pid, url, device, dtype) of the `ftrace serve` holding this index now, None when none does
    (`ftrace query` and `info` then ask it instead of opening the index)."""
    check_directory(index_dir)
    stamp = _held_by(index_dir, SERVE_LOCK)
    return stamp if stamp is not None and stamp.get("url") else None  # no url yet: mid-write, refused as before


def reading(index_dir: Path) -> None:
    """Raise IndexBusyError if an ingest is writing this index now, or a server holds it; a reader calls this
    before any model work. An index path that is a file is refused here too."""
    check_directory(index_dir)
    served = _held_by(index_dir, SERVE_LOCK)
    if served is not None:
        raise _served_error(index_dir, served)
    holder = writing(index_dir)
    if holder is None:
        return
    pid, since = holder
    raise IndexBusyError(f"{index_dir}: is being written by pid {pid} since {since}{progress_note(index_dir)}; "
                         "query it when ingest finishes")


def record_progress(index_dir: Path, stored: int, total: int) -> None:
    """The writer's progress, for readers: written beside and renamed over, so never read half-written."""
    write_atomic(Path(index_dir) / PROGRESS, json.dumps({"stored": stored, "total": total}))


def clear_progress(index_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (Path(index_dir) / PROGRESS).unlink()


def _progress(path: Path) -> tuple[int, int] | None:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        d = json.loads(path.read_text())
        return int(d["stored"]), int(d["total"])
    return None


def progress_note(index_dir: Path) -> str:
    """How far an ingest got: ' (N of M stored)' from the progress file; for a sharded ingest, which records
    progress in each shard's staging directory (shards/I-of-N/, see layout.py), the shards' counts summed;
    else ' (M examples planned)' from the manifest (the writer has not reached its vectors yet), else ''
    (no manifest while the writer loads its model)."""
    index_dir = Path(index_dir)
    own = _progress(index_dir / PROGRESS)
    if own is not None:
        return f" ({own[0]} of {own[1]} stored)"
    planned = None
    with contextlib.suppress(Exception):
        from ftrace.index.manifest import Manifest

        planned = Manifest.read(index_dir).corpus.examples
    shards = [p for p in map(_progress, sorted(index_dir.glob(f"{SHARDS}/{ANY_SHARD}/{PROGRESS}"))) if p is not None]
    if shards:
        total = planned if planned is not None else sum(t for _, t in shards)
        return f" ({sum(s for s, _ in shards)} of {total} stored by {len(shards)} shard{'s' * (len(shards) > 1)})"
    return "" if planned is None else f" ({planned} examples planned)"


@contextlib.contextmanager
def exclusive(index_dir: Path, name: str = SETUP_LOCK) -> Iterator[None]:
    """Hold `name` in the directory exclusively, waiting for other processes' turns (no time limit: each
    holds it only for setup work, and a dead holder's lock is released by the kernel)."""
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(index_dir / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _stamp(fd)
        yield
    finally:
        os.close(fd)


class StoreLock:
    """An exclusive hold on `.store.lock` while this process has the Qdrant Edge shard open."""

    def __init__(self, index_dir: Path, timeout_s: float | None = None):
        self.index_dir = Path(index_dir)
        self.timeout_s = store_wait_s() if timeout_s is None else timeout_s
        self.fd: int | None = None

    def acquire(self) -> None:
        if self.fd is not None:
            return
        fd = os.open(self.index_dir / STORE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout_s
        while not try_lock(fd, fcntl.LOCK_EX):
            if time.monotonic() >= deadline:
                pid, _ = _holder(fd)
                os.close(fd)
                raise IndexBusyError(f"{self.index_dir}: the vector store is in use by pid {pid} (e.g. a long "
                                     "bench); try again, or serve the index with one process")
            time.sleep(0.1)
        _stamp(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

