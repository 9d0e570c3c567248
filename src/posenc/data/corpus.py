"""Reading text corpora: plain or gzip files, UTF-8, one example a line; parallel text as two files or a TSV.

Bad data gets an error that names the file and the line, because a corpus of thousands of lines with one broken
line is otherwise a needle in a haystack: a missing file, an empty file, bytes that are not UTF-8, pair files whose
line counts differ, a TSV line with too few fields. Lines are split on ``\\n`` only (a ``\\r`` before it is
dropped, as is a UTF-8 byte-order mark at the start of the file); ``str.splitlines`` would also split on
characters such as U+2028 and could misalign the two sides of a parallel corpus.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import zlib
from dataclasses import dataclass

__all__ = ["ParallelText", "load_pair", "load_parallel", "load_tsv", "read_lines"]

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: pathlib.Path) -> bytes:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file")
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:  # detected by content, not by the name's suffix
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: a corrupt or truncated gzip file ({err})") from err
    return raw


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    """The lines of a UTF-8 text file (plain or gzip), without their line terminators.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for an empty file or for bytes that are not
    UTF-8, naming the file, the line (1-based) and the offending byte.
    """
    path = pathlib.Path(path)
    raw = _read_bytes(path)
    if raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark alone is an empty file too
        raw = raw[3:]
    if not raw.strip(b"\r\n"):
        raise ValueError(f"{path}: the file is empty")
    chunks = raw.split(b"\n")
    if chunks[-1] == b"":  # a final newline ends the last line rather than starting a new one
        chunks.pop()
    lines = []
    for number, chunk in enumerate(chunks, start=1):
        try:
            line = chunk.decode("utf-8")
        except UnicodeDecodeError as err:
            bad = chunk[err.start]
            raise ValueError(
                f"{path}:{number}: not valid UTF-8 (byte 0x{bad:02x} at byte offset {err.start} of the line)"
            ) from err
        lines.append(line[:-1] if line.endswith("\r") else line)
    return lines


@dataclass
class ParallelText:
    """Aligned source and target lines and where they came from (for messages that name a file and line)."""

    src: list[str]
    tgt: list[str]
    origin: str  # e.g. "train.de.gz | train.en.gz" or "pairs.tsv"

    def __post_init__(self) -> None:
        if len(self.src) != len(self.tgt):
            raise ValueError(f"{self.origin}: {len(self.src)} source lines but {len(self.tgt)} target lines")

    def __len__(self) -> int:
        return len(self.src)


def load_pair(src_path: str | os.PathLike[str], tgt_path: str | os.PathLike[str]) -> ParallelText:
    """Line ``i`` of ``src_path`` translates to line ``i`` of ``tgt_path``; the two must have as many lines."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise ValueError(
            f"the pair files have different line counts: {src_path} has {len(src)} lines, "
            f"{tgt_path} has {len(tgt)} lines"
        )
    return ParallelText(src=src, tgt=tgt, origin=f"{src_path} | {tgt_path}")


def load_tsv(path: str | os.PathLike[str], *, columns: tuple[int, int] = (0, 1)) -> ParallelText:
    """Source and target from two tab-separated columns of each line (0-based ``columns``)."""
    if len(columns) != 2 or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in columns):
        raise ValueError(f"columns must be two non-negative ints, got {columns!r}")
    need = max(columns) + 1
    src, tgt = [], []
    for number, line in enumerate(read_lines(path), start=1):
        fields = line.split("\t")
        if len(fields) < need:
            raise ValueError(
                f"{path}:{number}: {len(fields)} tab-separated field(s), but column {max(columns)} is needed "
                f"({need} fields)"
            )
        src.append(fields[columns[0]])
        tgt.append(fields[columns[1]])
    return ParallelText(src=src, tgt=tgt, origin=str(path))


def load_parallel(paths: str | os.PathLike[str] | list[str] | tuple[str, ...]) -> ParallelText:
    """One path: a TSV; two paths: a source file and a target file."""
    if isinstance(paths, (str, os.PathLike)):
        return load_tsv(paths)
    paths = list(paths)
    if len(paths) == 1:
        return load_tsv(paths[0])
    if len(paths) == 2:
        return load_pair(paths[0], paths[1])
    raise ValueError(f"a parallel corpus is one TSV file or a pair of files; got {len(paths)} paths: {paths}")
