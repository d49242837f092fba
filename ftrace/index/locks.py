"""Who may touch an index directory at once: OS file locks (`fcntl.flock`, Linux/macOS) on two files in it.

- `.write.lock`: held exclusively by `ftrace ingest` for its whole run (`writer`). A second ingest is refused
  at once, before any model work; a reader (`ftrace query`, `bench`, `info`) checks it first (`reading`) and
  refuses while an ingest writes. The file holds the writer's pid and start time, for the message only.
- `.store.lock`: held exclusively while a process has the Qdrant Edge shard open (`StoreLock`; Qdrant Edge
  takes an exclusive WAL lock per shard and has no read-only open). Others wait for it, up to
  `FTRACE_STORE_WAIT_S` seconds (default 60), then fail with one line; so concurrent queries take turns on
  the shard for the seconds each holds it, and a long `ftrace bench` holds it for its whole run.

The kernel releases a flock when its process dies, so there are no stale locks to clean up; the files stay.

- `.progress.json`: how many of the planned examples an ingest has stored, rewritten atomically after each
  batch (`record_progress`), so a refused reader can say how far the writer is without opening the shard.
  A killed ingest leaves it behind (still true: what was stored before the kill); a complete one removes it.
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

WRITE_LOCK, STORE_LOCK, PROGRESS = ".write.lock", ".store.lock", ".progress.json"
LOCK_FILES = (WRITE_LOCK, STORE_LOCK, PROGRESS)  # bookkeeping, not index content
WAIT_ENV = "FTRACE_STORE_WAIT_S"


class IndexBusyError(FtraceError):
    pass


def store_wait_s() -> float:
    """How long a process waits for another's hold on the vector store (`FTRACE_STORE_WAIT_S`, default 60)."""
    raw = os.environ.get(WAIT_ENV, "60")
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise FtraceError(f"{WAIT_ENV}={raw!r}: give a number of seconds") from None


def _try_lock(fd: int, how: int) -> bool:
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _holder(fd: int) -> tuple[str, str]:
    """The pid and start time a holder wrote into its lock file ('?' where unreadable, e.g. mid-write)."""
    try:
        d = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return str(d.get("pid", "?")), str(d.get("since", "?"))
    except (OSError, ValueError, AttributeError):
        return "?", "?"


def _stamp(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)


@contextlib.contextmanager
def writer(index_dir: Path) -> Iterator[None]:
    """Hold `.write.lock` for an ingest, or raise IndexBusyError at once if another process holds it.
    Creates the directory if needed; on exit removes what it created if the ingest wrote no index
    (a refused or failed ingest leaves no directory and no lock file behind)."""
    index_dir = Path(index_dir)
    made_dir = not index_dir.exists()
    index_dir.mkdir(parents=True, exist_ok=True)
    path = index_dir / WRITE_LOCK
    made_file = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd, fcntl.LOCK_EX):
            pid, since = _holder(fd)
            raise IndexBusyError(f"{index_dir}: is being written by pid {pid} since {since}; wait for it to finish")
        _stamp(fd)
        try:
            yield
        finally:
            if made_file and not (index_dir / "manifest.json").exists():  # nothing written: leave no trace
                with contextlib.suppress(OSError):
                    path.unlink()
                if made_dir:
                    with contextlib.suppress(OSError):
                        index_dir.rmdir()
    finally:
        os.close(fd)  # releases the lock


def reading(index_dir: Path) -> None:
    """Raise IndexBusyError if an ingest is writing this index now; a reader calls this before any model work."""
    path = Path(index_dir) / WRITE_LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        if _try_lock(fd, fcntl.LOCK_SH):
            return
        pid, since = _holder(fd)
    finally:
        os.close(fd)
    raise IndexBusyError(f"{index_dir}: is being written by pid {pid} since {since}{progress_note(index_dir)}; "
                         "query it when ingest finishes")


def record_progress(index_dir: Path, stored: int, total: int) -> None:
    """The writer's progress, for readers: written beside and renamed over, so never read half-written."""
    path = Path(index_dir) / PROGRESS
    tmp = path.with_name(PROGRESS + ".tmp")
    tmp.write_text(json.dumps({"stored": stored, "total": total}))
    tmp.replace(path)


def clear_progress(index_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (Path(index_dir) / PROGRESS).unlink()


def progress_note(index_dir: Path) -> str:
    """How far an ingest got: ' (N of M stored)' from the progress file, else ' (M examples planned)' from the
    manifest (the writer has not reached its vectors yet), else '' (no manifest while the writer loads its model)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        d = json.loads((Path(index_dir) / PROGRESS).read_text())
        return f" ({int(d['stored'])} of {int(d['total'])} stored)"
    with contextlib.suppress(Exception):
        from ftrace.index.manifest import Manifest

        return f" ({Manifest.read(Path(index_dir)).corpus.examples} examples planned)"
    return ""


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
        while not _try_lock(fd, fcntl.LOCK_EX):
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

