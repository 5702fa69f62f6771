"""Input a sender controls, checked before it costs anything: the size of a compressed image
read from its PNG/JPEG header before decoding, and malformed header stamps. No ROS."""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from match_node.engine import image as image_module
from match_node.engine.image import ImageError, checked_stamp_ns, compressed_image_size, decode_compressed

LIMIT = 16_777_216  # the node's default max_input_pixels


def constant_png(width: int, height: int, value: int = 0, block_rows: int = 64) -> bytes:
    """A real 8-bit gray PNG of one value, written without ever holding its pixels.

    The rows are deflated in blocks that each end with a full flush (byte-aligned, history
    reset), so every whole block compresses to the same bytes: two blocks are compressed and
    the second is repeated. The zlib checksum is computed over all rows. 20000x20000 takes
    about 400 KB and well under a second; decoding it would take 400 MB.
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    row = b"\x00" + bytes([value]) * width  # filter type 0, then the pixels
    block_rows = min(block_rows, height)
    blocks, rest = divmod(height, block_rows)
    block = row * block_rows
    compressor = zlib.compressobj(9)
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)  # with zlib header
    again = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.compress(row * rest) + compressor.flush()  # ends with a wrong Adler-32
    adler = 1
    for _ in range(blocks):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(row * rest, adler)
    stream = first + again * (blocks - 1) + tail[:-4] + adler.to_bytes(4, "big")
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream)
            + chunk(b"IEND", b""))


def encoded(extension: str, image: np.ndarray, *params: int) -> bytes:
    ok, data = cv2.imencode(extension, image, list(params))
    assert ok
    return data.tobytes()


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if OpenCV is asked to decode anything."""
    def refuse(*args, **kwargs):
        raise AssertionError("cv2.imdecode was called")
    monkeypatch.setattr(image_module.cv2, "imdecode", refuse)


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    return constant_png(20000, 20000)


TEXTURE = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)


# --- the PNG writer above is a real PNG writer ---------------------------------------------
@pytest.mark.parametrize("width,height", [(500, 300), (37, 64), (37, 65), (9, 200)])
def test_constant_png_decodes_to_its_pixels(width, height):
    image = decode_compressed(constant_png(width, height, value=7, block_rows=64))
    assert image.shape == (height, width) and image.dtype == np.uint8 and np.all(image == 7)


# --- sizes from the headers ----------------------------------------------------------------
def test_huge_png_is_refused_before_decoding(huge_png, no_decoding):
    assert len(huge_png) < 1_000_000  # a small message ...
    assert compressed_image_size(huge_png) == ("PNG", 20000, 20000)  # ... of 400 M pixels
    with pytest.raises(ImageError) as error:
        decode_compressed(huge_png, max_pixels=LIMIT)
    assert str(error.value) == ("PNG image of 20000x20000 (400000000 pixels) exceeds "
                                f"max_input_pixels={LIMIT}; dropped before decoding")


def test_huge_jpeg_is_refused_before_decoding(no_decoding):
    # A real JPEG whose frame header claims 20000x20000: libjpeg would allocate that much and
    # decode garbage into it; the header is all it takes to refuse it.
    data = bytearray(encoded(".jpg", TEXTURE))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 20000, 20000)
    assert compressed_image_size(bytes(data)) == ("JPEG", 20000, 20000)
    with pytest.raises(ImageError, match=r"JPEG image of 20000x20000 \(400000000 pixels\) "
                                         r"exceeds max_input_pixels=16777216"):
        decode_compressed(bytes(data), max_pixels=LIMIT)


@pytest.mark.parametrize("extension,params,kind", [
    (".png", (), "PNG"),
    (".png", (cv2.IMWRITE_PNG_COMPRESSION, 0), "PNG"),
    (".jpg", (), "JPEG"),
    (".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), "JPEG"),   # SOF2
    (".jpg", (cv2.IMWRITE_JPEG_OPTIMIZE, 1), "JPEG"),
])
def test_limit_is_exact_for_real_files(extension, params, kind):
    data = encoded(extension, TEXTURE, *params)
    assert compressed_image_size(data) == (kind, 300, 200)
    assert decode_compressed(data, max_pixels=300 * 200).shape == (200, 300, 3)
    with pytest.raises(ImageError, match=f"{kind} image of 300x200 .* exceeds "
                                         "max_input_pixels=59999; dropped before decoding"):
        decode_compressed(data, max_pixels=300 * 200 - 1)


def test_sixteen_bit_and_gray_png():
    gray16 = (np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50)
    data = encoded(".png", gray16)
    assert compressed_image_size(data) == ("PNG", 40, 30)
    assert decode_compressed(data, max_pixels=1200).dtype == np.float32


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def test_jpeg_thumbnail_and_fill_bytes_do_not_fool_the_parser():
    main = encoded(".jpg", TEXTURE)
    thumbnail = encoded(".jpg", TEXTURE[:16, :24])  # its own SOF0 says 24x16
    # EXIF-like APP1 carrying a whole JPEG, then fill bytes before the next marker.
    app1 = jpeg_segment(0xE1, b"Exif\x00\x00" + thumbnail)
    data = main[:2] + app1 + b"\xff\xff\xff" + main[2:]
    assert compressed_image_size(data) == ("JPEG", 300, 200)
    assert decode_compressed(data, max_pixels=60000).shape == (200, 300, 3)


# --- truncated, malformed, other formats ----------------------------------------------------
def test_every_truncation_is_an_image_error_never_a_crash():
    for data in (encoded(".jpg", TEXTURE), encoded(".png", TEXTURE)):
        kind, header_end = compressed_image_size(data)[0], None
        for cut in range(1, 700):
            try:
                size = compressed_image_size(data[:cut])
            except ImageError as error:
                assert "truncated" in str(error) or "malformed" in str(error)
                continue
            if cut < 8 and size is None:  # too short to tell the format
                continue
            assert size == (kind, 300, 200)
            header_end = header_end or cut
        assert header_end is not None and header_end < 700


@pytest.mark.parametrize("data,fragment", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00", "truncated PNG header"),
    (constant_png(10, 10)[:12] + b"IDAT" + constant_png(10, 10)[16:], "not a 13-byte IHDR"),
    (constant_png(10, 10)[:20] + b"\x00\x01" + constant_png(10, 10)[22:], "checksum"),
    (b"\xff\xd8", "truncated JPEG"),
    (b"\xff\xd8\xff", "truncated JPEG"),
    (b"\xff\xd8garbage", "no marker at byte 2"),
    (b"\xff\xd8\xff\xe0\x00", "segment 0xE0 at byte 2 is cut"),
    (b"\xff\xd8\xff\xe0\x00\x01", "length 1"),
    (b"\xff\xd8\xff\xda\x00\x08", "marker 0xDA before the frame header"),
    (b"\xff\xd8\xff\xd9", "marker 0xD9 before the frame header"),
    (b"\xff\xd8" + jpeg_segment(0xE0, bytes(14)) + b"\xff\xc0\x00\x11\x08",
     "frame header is cut"),
    (b"\xff\xd8\xff\xc0\x00\x0b\x08\x00\x00\x01\x00\x01\x01\x00\x11\x00",
     "size of 256x0"),
])
def test_malformed_headers_are_refused_with_the_reason(data, fragment, no_decoding):
    with pytest.raises(ImageError, match=fragment):
        decode_compressed(data, max_pixels=LIMIT)


def test_png_header_with_zero_size():
    header = struct.pack(">IIBBBBB", 0, 10, 8, 0, 0, 0, 0)
    body = b"IHDR" + header
    data = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + body
            + struct.pack(">I", zlib.crc32(body)))
    with pytest.raises(ImageError, match="size of 0x10"):
        compressed_image_size(data)


def test_other_formats_only_without_a_limit(no_decoding):
    bmp = encoded(".bmp", TEXTURE)
    assert compressed_image_size(bmp) is None
    with pytest.raises(ImageError, match=r"neither PNG nor JPEG \(first bytes 42 4d"):
        decode_compressed(bmp, max_pixels=LIMIT)
    with pytest.raises(ImageError, match="neither PNG nor JPEG"):
        decode_compressed(b"garbage bytes", max_pixels=LIMIT)
    with pytest.raises(ImageError, match="no data"):
        decode_compressed(b"", max_pixels=LIMIT)


def test_other_formats_decode_without_a_limit():
    # Trusted files (no limit given): any format OpenCV reads, as before.
    assert decode_compressed(encoded(".bmp", TEXTURE)).shape == (200, 300, 3)


def test_numpy_and_memoryview_inputs(huge_png):
    array = np.frombuffer(huge_png, np.uint8)
    assert compressed_image_size(array) == ("PNG", 20000, 20000)
    assert compressed_image_size(memoryview(huge_png)) == ("PNG", 20000, 20000)
    assert compressed_image_size(bytearray(huge_png)) == ("PNG", 20000, 20000)


# --- header stamps -------------------------------------------------------------------------
def test_valid_stamps():
    assert checked_stamp_ns(0, 0) == 0
    assert checked_stamp_ns(1_700_000_000, 999_999_999) == 1_700_000_000_999_999_999
    assert checked_stamp_ns(2**31 - 1, 0) == (2**31 - 1) * 10**9  # 2038: valid, if odd


@pytest.mark.parametrize("sec,nanosec,fragment", [
    (5, 1_000_000_000, "nanosec 1000000000 is outside 0..999999999"),
    (5, 4_294_967_295, "nanosec 4294967295"),
    (-1, 0, "sec -1 is negative"),
    (5, -1, "nanosec -1"),
])
def test_malformed_stamps_are_image_errors(sec, nanosec, fragment):
    with pytest.raises(ImageError, match=f"malformed header stamp: {fragment}"):
        checked_stamp_ns(sec, nanosec)


# --- the offline runner (bags) checks the same before decoding -----------------------------
def test_offline_runner_drops_a_compressed_bomb_before_decoding(pipeline, huge_png,
                                                                no_decoding):
    from match_node.bags import msgtypes, rosbag as bags
    from match_node.bags.offline import MonoRunner
    ts = msgtypes.typestore()
    message = msgtypes.make_message(ts, msgtypes.COMPRESSED_IMAGE, {
        "header": msgtypes.header_fields(5 * 10**9, "cam"), "format": "png",
        "data": np.frombuffer(huge_png, np.uint8)})
    frame = bags.BagImage("/camera/image/compressed", msgtypes.COMPRESSED_IMAGE, 5 * 10**9,
                          5 * 10**9, "cam", ts.serialize_cdr(message, msgtypes.COMPRESSED_IMAGE))
    runner = MonoRunner(pipeline, "/camera/image/compressed", "/out", max_input_pixels=LIMIT)
    assert runner.process(frame) == []
    assert runner.log[-1].status == "dropped"
    assert runner.log[-1].note.startswith("PNG image of 20000x20000 (400000000 pixels) exceeds")
