"""Check that a file is a valid PNG: the signature, the IHDR size, and a full decode."""

from __future__ import annotations

import pathlib
import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: pathlib.Path) -> tuple[int, int]:
    """(width, height) of a PNG, after checking its signature, IHDR chunk and CRC, and decoding it fully."""
    data = pathlib.Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} does not start with the PNG signature"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    (crc,) = struct.unpack(">I", data[29:33])
    assert crc == zlib.crc32(data[12:29]), "IHDR CRC mismatch"
    from matplotlib.image import imread

    pixels = imread(str(path))
    assert pixels.shape[:2] == (height, width)
    return width, height


import pytest  # noqa: E402


@pytest.fixture
def check_png():
    """``check_png(path) -> (width, height)`` for a valid PNG file; fails the test otherwise."""
    return png_size
