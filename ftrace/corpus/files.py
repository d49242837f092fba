"""The files a corpus of records comes in: jsonl (plain, .gz or .zst), parquet, a Hugging Face `datasets` directory
(`save_to_disk`), or a directory of such files (shards, read in name order).

`read_records` yields (where, record) one record at a time, `where` naming the file and its line (jsonl, from 1) or
row (parquet and datasets, from 0: what `table[i]` and `dataset[i]` take), so that a bad record is reported there.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ftrace import FtraceError


class CorpusError(FtraceError):
    pass


JSONL = (".jsonl", ".jsonl.gz", ".jsonl.zst")
PARQUET = ".parquet"
DATASETS_STATE = "state.json"  # what `datasets.Dataset.save_to_disk` writes beside its .arrow files
ROWS_PER_BATCH = 1024  # parquet and arrow rows read at a time: memory bounded by a batch, not the file


@dataclass(frozen=True)
class Where:
    """Where a record is: its file (and that file's number among a directory's; a datasets directory itself, its rows
    counted across its shards), and its line (jsonl, from 1) or row (parquet and datasets, from 0: what `table[i]` and
    `dataset[i]` take)."""

    file: Path
    file_number: int
    line: int | None = None
    row: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else f"{self.file}: row {self.row}"

    @property
    def number(self) -> int:
        return self.line if self.line is not None else self.row or 0

    def default_id(self, prefix: str) -> str:
        """An id for a record that gives none: PREFIX + its line or row, with its file's name after the first."""
        return f"{prefix}{self.number}" if self.file_number == 0 else f"{self.file.name}:{prefix}{self.number}"

    def same_file(self, other: Where) -> bool:
        return self.file == other.file


def is_records(path: Path) -> bool:
    """Whether `path` is a file or directory of records (as opposed to a LAMA directory or a raw T-REx .json file);
    a file of any name but .json is read as records (jsonl unless compressed or parquet)."""
    if path.is_dir():
        return not (path / "relations.jsonl").exists()
    return path.suffix != ".json"


def record_files(path: Path) -> list[Path]:
    """The files to read, in order: `path` itself, a `datasets` directory's arrow files, or a directory's record
    files (not recursive)."""
    if not path.is_dir():
        return [path]
    if (path / "dataset_dict.json").exists():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise CorpusError(f"{path}: a datasets DatasetDict; give one split's directory ({', '.join(splits)})")
    if (path / DATASETS_STATE).exists():
        return [path / f["filename"] for f in _datasets_files(path)]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith((*JSONL, PARQUET)))
    if not files:
        raise CorpusError(f"{path}: no corpus files in this directory (.jsonl, .jsonl.gz, .jsonl.zst or .parquet), "
                          "and it is neither a datasets directory (state.json) nor a LAMA T-REx one (relations.jsonl)")
    return files


def _datasets_files(path: Path) -> list[dict[str, Any]]:
    try:
        state = json.loads((path / DATASETS_STATE).read_text(encoding="utf-8"))
        return list(state["_data_files"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorpusError(f"{path / DATASETS_STATE}: not a datasets state file ({type(e).__name__}: {e})") from None


def read_records(path: Path, max_line: int | None = None) -> Iterator[tuple[Where, dict[str, Any]]]:
    """Every record of the file or directory `path`, with where it is. `max_line`: the longest jsonl line accepted
    (a longer one is an error, and is never read whole). A file that is neither compressed jsonl nor parquet is read
    as jsonl, whatever its name (.jsonl, .ndjson, none)."""
    row = 0  # a datasets directory's rows are numbered across its files, as `dataset[i]` does
    datasets = path.is_dir() and (path / DATASETS_STATE).exists()
    for k, f in enumerate(record_files(path)):
        if datasets:
            for obj in _read_arrow(f, True):
                yield Where(path, 0, row=row), obj  # named by the directory, as `dataset[i]` counts
                row += 1
        elif f.name.endswith(PARQUET):
            for i, obj in enumerate(_read_arrow(f, False)):
                yield Where(f, k, row=i), obj
        else:
            for n, obj in read_jsonl(f, max_line):
                yield Where(f, k, line=n), obj


def _decompress_errors(path: Path) -> tuple[type[BaseException], ...]:
    """What reading a (compressed) jsonl file raises on corrupt data: gzip's BadGzipFile is an OSError, a truncated
    stream an EOFError; zstandard's ZstdError is its own."""
    if path.name.endswith(".zst"):
        import zstandard

        return OSError, EOFError, zstandard.ZstdError
    return OSError, EOFError, zlib.error


def _open_jsonl(path: Path, stack: ExitStack) -> io.BufferedIOBase | IO[bytes]:
    raw = stack.enter_context(open(path, "rb"))
    if path.name.endswith(".gz"):
        return stack.enter_context(gzip.open(raw))
    if path.name.endswith(".zst"):
        return stack.enter_context(io.BufferedReader(_ZstdFrames(raw)))
    return raw


class _ZstdFrames(io.RawIOBase):
    """A .zst file's frames, decompressed in turn; a file that ends inside a frame is an error (zstandard's
    stream_reader returns nothing for it, silently)."""

    def __init__(self, raw: IO[bytes]):
        import zstandard

        self.raw, self.new = raw, zstandard.ZstdDecompressor().decompressobj
        self.d, self.buf = self.new(), b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self.buf:
            if self.d.eof:  # a frame ended: the next one, if any, starts in what it left over
                chunk = self.d.unused_data or self.raw.read(ROWS_PER_BATCH * 64)
                if not chunk:
                    return 0
                self.d = self.new()
            else:
                chunk = self.raw.read(ROWS_PER_BATCH * 64)
                if not chunk:
                    raise EOFError("the file ends inside a compressed frame (truncated?)")
            self.buf = self.d.decompress(chunk)
        n = min(len(b), len(self.buf))
        b[:n], self.buf = self.buf[:n], self.buf[n:]
        return n


def read_jsonl(path: Path, max_line: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line of a jsonl file (plain, .gz or .zst); a bad line (or one
    over `max_line` bytes) raises CorpusError."""
    with ExitStack() as stack:
        try:
            f = _open_jsonl(path, stack)  # lines decoded one by one, so a bad byte is reported on its own line
        except OSError as e:
            raise CorpusError(f"{path}: cannot read corpus file ({e.strerror})") from None
        errors, n = _decompress_errors(path), 0
        while True:
            try:
                raw = f.readline(-1 if max_line is None else max_line + 2)  # a huge line is never read whole
            except errors as e:
                raise CorpusError(f"{path}:{n + 1}: cannot decompress ({type(e).__name__}: {e})") from None
            if not raw:
                break
            n += 1
            if max_line is not None and len(raw.rstrip(b"\r\n")) > max_line:
                raise CorpusError(f"{path}:{n}: line longer than {max_line:,} bytes; a corpus line holds one "
                                  "record")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                hint = "; a compressed file needs its .gz or .zst suffix" if n == 1 and raw[:2] in (
                    b"\x1f\x8b", b"\x28\xb5") else ""
                raise CorpusError(f"{path}:{n}: not UTF-8 text (byte {e.object[e.start]:#04x}){hint}") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line.rstrip("\r\n"))  # without its newline: an error at its end is on this line
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{n}: {json_error(e)}") from None
            if not isinstance(obj, dict):
                raise CorpusError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            yield n, obj


def _read_arrow(path: Path, stream: bool) -> Iterator[dict[str, Any]]:
    """The rows of a parquet file, or of an Arrow IPC stream (a `datasets` shard), a batch at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if stream:
            with pa.memory_map(str(path)) as source:
                reader = pa.ipc.open_stream(source)
                for batch in reader:
                    yield from batch.to_pylist()
        else:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=ROWS_PER_BATCH):
                yield from batch.to_pylist()
    except (OSError, pa.ArrowException) as e:
        raise CorpusError(f"{path}: cannot read {'Arrow' if stream else 'parquet'} file "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def json_error(e: json.JSONDecodeError) -> str:
    """json's message with its position: its `msg` alone can end mid-sentence ("Invalid control character at")."""
    return f"not valid JSON ({e.msg.removesuffix(' at')} at column {e.colno})"
