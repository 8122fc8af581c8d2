"""Image sizes from file headers, without decoding pixels (JPEG, PNG, TIFF and BigTIFF).

Scanning an export must be fast (the paper's 165,190 images in well under a minute), so the scan
reads only the few bytes that hold the size: the JPEG start-of-frame segment, the PNG IHDR chunk,
or the first TIFF image file directory.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

_HEAD = 32  # enough for the PNG IHDR chunk and the TIFF header
# Start-of-frame markers that carry the frame size (not DHT C4, JPG C8 or DAC CC).
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers without a length field.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xDA)})
_TIFF_SIZE_TAGS = {256: "width", 257: "height", 258: "bits", 277: "channels"}


class HeaderError(ValueError):
    """The file's header is missing, truncated or of an unsupported format; message = reason."""


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What the header says about an image."""

    format: str
    width: int
    height: int
    bits: int
    channels: int


def _need(buf: bytes, n: int, what: str) -> bytes:
    if len(buf) < n:
        raise HeaderError(f"truncated {what}")
    return buf


def _jpeg(f: BinaryIO) -> ImageHeader:
    """Walk the JPEG segments up to the first start-of-frame (buffered reads, few syscalls)."""
    pos = 2
    while True:
        f.seek(pos)
        seg = _need(f.read(10), 2, "JPEG: no start-of-frame segment")
        if seg[0] != 0xFF:
            raise HeaderError(f"corrupt JPEG: expected a marker at byte {pos}")
        marker = seg[1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in _STANDALONE:
            pos += 2
        elif marker in (0xD9, 0xDA):
            raise HeaderError("JPEG without a start-of-frame segment before the scan")
        elif marker in _SOF:
            _need(seg, 10, "JPEG start-of-frame segment")
            bits, height, width, channels = struct.unpack_from(">BHHB", seg, 4)
            return ImageHeader("jpeg", width, height, bits, channels)
        else:
            _need(seg, 4, "JPEG segment")
            (length,) = struct.unpack_from(">H", seg, 2)
            pos += 2 + length


def _png(head: bytes) -> ImageHeader:
    _need(head, 26, "PNG header")
    if head[12:16] != b"IHDR":
        raise HeaderError("PNG without IHDR chunk")
    width, height, bits, colour = struct.unpack_from(">IIBB", head, 16)
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour)
    if channels is None:
        raise HeaderError(f"PNG with unknown colour type {colour}")
    return ImageHeader("png", width, height, bits, channels)


def _tiff(f: BinaryIO, head: bytes) -> ImageHeader:
    _need(head, 16, "TIFF header")
    order = "<" if head[:2] == b"II" else ">"
    (magic,) = struct.unpack_from(order + "H", head, 2)
    if magic == 42:
        (ifd,) = struct.unpack_from(order + "I", head, 4)
        count_fmt, entry_fmt, entry_size, value_offset = "H", "HHI", 12, 8
    elif magic == 43:
        (ifd,) = struct.unpack_from(order + "Q", head, 8)
        count_fmt, entry_fmt, entry_size, value_offset = "Q", "HHQ", 20, 12
    else:
        raise HeaderError(f"TIFF with unknown version {magic}")
    f.seek(ifd)
    count_size = struct.calcsize(count_fmt)
    raw = f.read(count_size)
    _need(raw, count_size, "TIFF image file directory")
    (count,) = struct.unpack(order + count_fmt, raw)
    table = f.read(count * entry_size)
    _need(table, count * entry_size, "TIFF image file directory")
    found: dict[str, int] = {"bits": 1, "channels": 1}
    for i in range(count):
        base = i * entry_size
        tag, kind, _n = struct.unpack_from(order + entry_fmt, table, base)
        if tag in _TIFF_SIZE_TAGS:
            fmt = {3: "H", 4: "I", 16: "Q"}.get(kind)
            if fmt is None:
                raise HeaderError(f"TIFF tag {tag} has unexpected type {kind}")
            (found[_TIFF_SIZE_TAGS[tag]],) = struct.unpack_from(
                order + fmt, table, base + value_offset
            )
    if "width" not in found or "height" not in found:
        raise HeaderError("TIFF without image width or length tag")
    return ImageHeader("tiff", found["width"], found["height"], found["bits"], found["channels"])


def read_header(path: str) -> ImageHeader:
    """Read an image's format and size from its header; raise ``HeaderError`` with the reason.

    OS errors (permission denied, missing file) propagate as ``OSError``.
    """
    with open(path, "rb") as f:
        head = f.read(_HEAD)
        if not head:
            raise HeaderError("empty file")
        try:
            if head[:2] == b"\xff\xd8":
                info = _jpeg(f)
            elif head[:8] == b"\x89PNG\r\n\x1a\n":
                info = _png(head)
            elif head[:2] in (b"II", b"MM"):
                info = _tiff(f, head)
            else:
                raise HeaderError("not a JPEG, PNG or TIFF file (unknown signature)")
        except struct.error:
            raise HeaderError("truncated header") from None
    if info.width <= 0 or info.height <= 0:
        raise HeaderError(f"header gives an empty image ({info.width} x {info.height})")
    return info
