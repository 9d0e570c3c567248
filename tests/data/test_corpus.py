from __future__ import annotations

import gzip

import pytest

from posenc.data.corpus import load_pair, load_parallel, load_tsv, read_lines


def test_plain_and_gzip_read_the_same(tmp_path) -> None:
    text = "erste Zeile\r\nzweite 😀\n\nvierte\u2028bleibt eine Zeile\n"
    (tmp_path / "a.txt").write_bytes(("\ufeff" + text).encode("utf-8"))
    (tmp_path / "a.gz").write_bytes(gzip.compress(text.encode("utf-8")))
    (tmp_path / "plain_named.gz").write_bytes(text.encode("utf-8"))  # detected by content, not by name
    want = ["erste Zeile", "zweite 😀", "", "vierte\u2028bleibt eine Zeile"]
    assert read_lines(tmp_path / "a.txt") == want
    assert read_lines(tmp_path / "a.gz") == want
    assert read_lines(tmp_path / "plain_named.gz") == want


def test_missing_empty_and_not_utf8(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.de: no such file"):
        read_lines(tmp_path / "nope.de")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.txt: the file is empty"):
        read_lines(tmp_path / "empty.txt")
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf\r\n")  # an "empty" UTF-8 file as some editors save it
    with pytest.raises(ValueError, match="bom.txt: the file is empty"):
        read_lines(tmp_path / "bom.txt")
    (tmp_path / "empty.gz").write_bytes(gzip.compress(b"\n"))
    with pytest.raises(ValueError, match="empty.gz: the file is empty"):
        read_lines(tmp_path / "empty.gz")
    (tmp_path / "latin1.txt").write_bytes("ok\nauch ok\nStra\u00dfe\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt:3: not valid UTF-8 \(byte 0xdf at byte offset 4"):
        read_lines(tmp_path / "latin1.txt")
    (tmp_path / "broken.gz").write_bytes(gzip.compress(b"a\nb\n" * 100)[:-10])
    with pytest.raises(ValueError, match="broken.gz: a corrupt or truncated gzip file"):
        read_lines(tmp_path / "broken.gz")


def test_pair_counts_must_match(tmp_path) -> None:
    (tmp_path / "s.de").write_text("a\nb\nc\n", encoding="utf-8")
    (tmp_path / "t.en").write_text("x\ny\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"s\.de has 3 lines, .*t\.en has 2 lines"):
        load_pair(tmp_path / "s.de", tmp_path / "t.en")
    (tmp_path / "t.en").write_text("x\ny\nz", encoding="utf-8")  # no final newline: still three lines
    pt = load_pair(tmp_path / "s.de", tmp_path / "t.en")
    assert (pt.src, pt.tgt) == (["a", "b", "c"], ["x", "y", "z"])


def test_tsv(tmp_path) -> None:
    (tmp_path / "p.tsv").write_text("Hund\tdog\nKatze\tcat\textra\n", encoding="utf-8")
    pt = load_parallel(tmp_path / "p.tsv")
    assert (pt.src, pt.tgt) == (["Hund", "Katze"], ["dog", "cat"])
    assert load_tsv(tmp_path / "p.tsv", columns=(1, 0)).src == ["dog", "cat"]
    (tmp_path / "bad.tsv").write_text("Hund\tdog\nKatze cat\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.tsv:2: 1 tab-separated field\(s\)"):
        load_tsv(tmp_path / "bad.tsv")
    with pytest.raises(ValueError, match="one TSV file or a pair of files; got 3 paths"):
        load_parallel(["a", "b", "c"])
