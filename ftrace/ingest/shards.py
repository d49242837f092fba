"""Sharded featurisation: `ftrace ingest --shard I/N` stores the vectors of a deterministic 1/N of the
examples, then `ftrace ingest` without --shard finishes the index.

- Split: example k (in corpus order) belongs to shard k mod N: every example exactly once, shard
  sizes within one of each other, the same in every process (the corpus is fingerprinted).
- Each shard writes into its staging directory INDEX/shards/I-of-N/ (its manifest, and for the
  in-directory back ends its own store: Qdrant Edge and qdrant-client's local mode take one writer
  per store); with a Qdrant server (`--qdrant remote`) all shards write into the one collection.
- The final ingest checks that every shard finished with the index's settings (refusing, and naming
  the shards to run or resume, otherwise), merges the staging stores into the index's through one
  writer, checks that every example is stored, marks the index complete and removes shards/.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterable, Sequence
from typing import TypeVar

from ftrace import FtraceError
from ftrace.index.files import MANIFEST
from ftrace.index.layout import IndexDir
from ftrace.index.locks import writing
from ftrace.index.manifest import Manifest
from ftrace.index.vectors import VectorStore

T = TypeVar("T")


class ShardError(FtraceError):
    pass


def split(items: Sequence[T], i: int, n: int) -> list[T]:
    """Shard I of N: items I, I+N, I+2N, ..."""
    return list(items[i::n])


def rows(count: int, i: int, n: int) -> range:
    """Shard I of N of a corpus of `count` rows (numbered from 1): `split` of its examples."""
    return range(i + 1, count + 1, n)


def check_layout(index: IndexDir, n: int) -> None:
    """Refuse --shard I/N where the index holds shards of another split (before any model work)."""
    other = sorted({m for (_, m) in index.shards() if m != n})
    if other:
        raise ShardError(f"{index.path}: holds shards of a {other[0]}-way split (shards/); use --shard I/{other[0]}, "
                         "or delete shards/ to start over")


def unfinished(index: IndexDir, manifest: Manifest) -> list[str]:
    """What keeps the shards from being merged, one phrase per shard (empty: all finished)."""
    shards = index.shards()
    splits = sorted({n for (_, n) in shards})
    if len(splits) > 1:
        return [f"shards of several splits ({', '.join(f'{n}-way' for n in splits)}) in {index.shards_dir}"]
    n = splits[0]
    out = []
    for i in range(n):
        d = index.shard(i, n)
        holder = writing(d.path)
        if holder is not None:
            out.append(f"{i}/{n} is running (pid {holder[0]})")
        elif not (d.path / MANIFEST).exists():
            out.append(f"{i}/{n} has not run")
        elif diffs := Manifest.read(d.path).differences(manifest):
            out.append(f"{i}/{n} was built differently ({'; '.join(diffs[:2])})")
        elif not Manifest.read(d.path).complete:
            out.append(f"{i}/{n} was interrupted")
    return out


def merge(index: IndexDir, store: VectorStore, manifest: Manifest, example_ids: Iterable[str]) -> None:
    """Finish a sharded ingest into `store` (the index's, open): refuse while any shard is unfinished,
    copy the staging stores in, check that every example is stored, remove the staging directories."""
    problems = unfinished(index, manifest)
    if problems:
        n = max(n for (_, n) in index.shards())
        raise ShardError(f"{index.path}: sharded ingest unfinished: shard {'; shard '.join(problems)}. Run or "
                         f"resume each with `ftrace ingest --shard I/{n}` and the same options, then `ftrace ingest` "
                         "again")
    names = list(manifest.vectors)
    if manifest.store.backend != "remote":  # a server's collection already holds every shard's points
        for d in index.shards().values():
            src = d.open_store()
            try:
                for ids, vectors, payloads in src.points(names):
                    store.upsert(ids, vectors, payloads)
            finally:
                src.close()
    missing: list[int] = []  # positions of the examples no store holds
    first = ""
    count = 0
    every = iter(example_ids)
    while part := list(itertools.islice(every, 1000)):
        stored = store.present(part)
        for example in part:
            if example not in stored:
                first = first or example
                missing.append(count)
            count += 1
    if missing:  # a shard's store lost points: reopen those shards, so that running them again stores them
        n = max(n for (_, n) in index.shards())
        owners = sorted({k % n for k in missing})
        for i in owners:
            m = Manifest.read(index.shard(i, n).path)
            m.complete = False
            m.write(index.shard(i, n).path)
        raise ShardError(f"{index.path}: {len(missing)} of {count} examples are missing from the shards' stores "
                         f"(e.g. {first}); run `ftrace ingest --shard I/{n}` again for I in "
                         f"{', '.join(map(str, owners))}, then `ftrace ingest`")


def remove_staging(index: IndexDir) -> None:
    shutil.rmtree(index.shards_dir, ignore_errors=True)
