"""Image sizes from headers agree with a full decode, for every format the scan accepts."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from clanet_store.exports.headers import HeaderError, read_header


def _write(path, fmt, width, height, **kw):
    arr = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, fmt, **kw)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_pil_written_images(tmp_path, fmt):
    path = tmp_path / f"x.{fmt.lower()}"
    _write(path, fmt, 37, 23)
    h = read_header(str(path))
    assert (h.width, h.height, h.channels) == (37, 23, 3)
    assert h.format == fmt.lower()


def test_jpeg_with_exif_and_progressive(tmp_path):
    path = tmp_path / "x.jpg"
    exif = Image.Exif()
    exif[0x010E] = "a long description " * 200  # pushes the start-of-frame past the first KB
    _write(path, "JPEG", 64, 48, exif=exif.tobytes(), progressive=True)
    h = read_header(str(path))
    assert (h.width, h.height, h.bits) == (64, 48, 8)


@pytest.mark.parametrize("bigtiff", [False, True])
@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_tiff_16bit_and_bigtiff(tmp_path, bigtiff, byteorder):
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, np.zeros((520, 704), np.uint16), bigtiff=bigtiff, byteorder=byteorder)
    h = read_header(str(path))
    assert (h.width, h.height, h.bits, h.channels) == (704, 520, 16, 1)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"hello world, not an image", "unknown signature"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "start-of-frame"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "truncated"),
        (b"II*\x00\xff\xff\x00\x00" + b"\x00" * 8, "truncated"),
    ],
)
def test_bad_headers_give_reasons(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(HeaderError, match=reason):
        read_header(str(path))


@pytest.mark.realdata
def test_real_images_match_full_decode(shared_data):
    paths = sorted((shared_data / "azgcb_sample").rglob("*.jpg"))[:10]
    paths += sorted((shared_data / "livecell_shsy5y").glob("*.tif"))[:4]
    for path in paths:
        h = read_header(str(path))
        with Image.open(path) as im:
            assert (h.width, h.height) == im.size, path
