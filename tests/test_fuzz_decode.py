"""Property-based fuzzing of the one image decoder (vitdetect.data.decode) and of the two paths that take files from
strangers: `vitdetect predict` on a folder and the server's upload path.

Seeds are small real images made here (a CIFAKE-like JPEG, the same as PNG, WebP, GIF and BMP, a 16-bit PNG, a
CMYK JPEG, a JPEG with an EXIF orientation); Hypothesis mutates them (byte flips, truncations, inserted or
duplicated chunks, absurd dimensions written into the headers) and checks that every input gives an image or one
ImageDecodeError line, in bounded time and memory, and that the runs around it go on. CI: a fixed seed and the
example counts below (conftest.fuzz_settings); `pytest --hypothesis-profile=long tests/test_fuzz_decode.py` runs
25 times as many with random seeds.
"""

from __future__ import annotations

import io
import json
import re
import resource
import struct
import tempfile
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageOps

from conftest import fuzz_settings, make_image, random_checkpoint, run_main
from vitdetect.data.decode import ImageDecodeError, decode_rgb

pytestmark = pytest.mark.usefixtures("single_thread")
DECODE_SECONDS = 10.0  # one 32x32 file decodes in about a millisecond; 10 s is a hang even on a starved machine
# Pillow refuses images over its decompression-bomb limit (~89.5M pixels) before decoding; under it, a header may
# still claim that many pixels, and converting them to RGB takes several full-size copies (RGBA composited on
# white, 16-bit scaled): about 2 GB at the limit. A tiny file may make the decoder allocate that much, no more.
DECODE_MEGABYTES = 2048
ABSURD = [0, 1, 255, 8_000, 65_535, 100_000, 2**31 - 1, 2**32 - 1]
EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "gif": ".gif", "bmp": ".bmp", "png16": ".png",
              "cmyk": ".jpg", "exif": ".jpg"}


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def seed_images() -> dict[str, bytes]:
    """The unmutated seeds, each a small valid file of one kind."""
    rgb = make_image(1, np.random.default_rng(26))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    frames = [rgb.convert("P"), make_image(0, np.random.default_rng(27)).convert("P")]
    return {"jpeg": encoded(rgb, "JPEG", quality=90), "png": encoded(rgb, "PNG"),
            "webp": encoded(rgb, "WEBP", quality=80), "gif": encoded(frames[0], "GIF", save_all=True,
                                                                    append_images=frames[1:]),
            "bmp": encoded(rgb, "BMP"),
            "png16": encoded(Image.fromarray(np.asarray(rgb)[..., 0].astype(np.uint16) * 257), "PNG"),
            "cmyk": encoded(rgb.convert("CMYK"), "JPEG"),
            "exif": encoded(rgb.crop((0, 0, 32, 24)), "JPEG", exif=exif)}


SEEDS = seed_images()


def dimension_fields(kind: str) -> list[tuple[int, str]]:
    """(offset, struct format) of the width and height fields in a seed's header (where a mutation that came
    before may have moved them: then another field gets the value)."""
    data = SEEDS[kind]
    if kind.startswith("png"):
        return [(16, ">I"), (20, ">I")]
    if kind == "gif":
        return [(6, "<H"), (8, "<H")]
    if kind == "bmp":
        return [(18, "<i"), (22, "<i")]
    if kind == "webp":
        return [(26, "<H"), (28, "<H")]  # a simple lossy file: "VP8 " frame header after the start code
    frame = next(data.find(marker) for marker in (b"\xff\xc0", b"\xff\xc2") if data.find(marker) >= 0)
    return [(frame + 5, ">H"), (frame + 7, ">H")]  # JPEG start of frame: height, then width


def set_dimension(draw, kind: str, data: bytearray) -> bytearray:
    offset, fmt = draw(st.sampled_from(dimension_fields(kind)))
    bits = struct.calcsize(fmt) * 8
    value = draw(st.sampled_from(ABSURD)) % 2**bits
    if fmt[-1].islower() and value >= 2 ** (bits - 1):
        value -= 2**bits  # a signed field: the same bits
    if offset + struct.calcsize(fmt) <= len(data):
        struct.pack_into(fmt, data, offset, value)
        if kind.startswith("png") and len(data) >= 33 and draw(st.booleans()):  # a valid checksum: believed
            struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return data


def flip_bytes(draw, kind: str, data: bytearray) -> bytearray:
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    return data


def truncate(draw, kind: str, data: bytearray) -> bytearray:
    return data[: draw(st.integers(0, len(data) - 1))]


def insert_chunk(draw, kind: str, data: bytearray) -> bytearray:
    """Random bytes, or a stretch of the file itself (a repeated marker, chunk or frame), inserted anywhere."""
    start = draw(st.integers(0, len(data) - 1))
    inserted = draw(st.one_of(st.binary(min_size=1, max_size=256),
                              st.integers(1, 512).map(lambda length: bytes(data[start:start + length]))))
    at = draw(st.integers(0, len(data)))
    return data[:at] + inserted + data[at:]


MUTATIONS = [flip_bytes, truncate, insert_chunk, set_dimension]


@st.composite
def mutated_images(draw) -> tuple[str, bytes]:
    """(seed kind, bytes): a seed with 1-3 mutations, or rarely none."""
    kind = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[kind])
    for _ in range(draw(st.integers(0, 3))):
        if data:
            data = draw(st.sampled_from(MUTATIONS))(draw, kind, data)
    return kind, bytes(data)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bounded_decode(data: bytes, size: int | None) -> np.ndarray | str:
    """decode_rgb(data, size): the image, or the error's message; fails on a hang, a memory spike or a warning."""
    before = peak_rss_mb()
    pool = ThreadPoolExecutor(1)  # a hung decode fails the test instead of hanging it
    with warnings.catch_warnings(record=True) as caught:  # the filters in force: what a user would see
        try:
            result = pool.submit(decode_rgb, data, size).result(timeout=DECODE_SECONDS)
        except ImageDecodeError as exc:
            result = str(exc)
        except FutureTimeout:
            pytest.fail(f"decoding took over {DECODE_SECONDS:g} s")
        finally:
            pool.shutdown(wait=False)
    assert peak_rss_mb() - before < DECODE_MEGABYTES
    assert not caught, [str(warning.message) for warning in caught]  # nothing printed besides the one line
    return result


def test_the_seeds_are_valid_images_of_their_kind():
    for kind, data in SEEDS.items():
        rgb = bounded_decode(data, None)
        assert isinstance(rgb, np.ndarray) and rgb.shape == ((32, 24, 3) if kind == "exif" else (32, 32, 3)), kind


def jpeg_with_corrupt_exif() -> bytes:
    """A good JPEG whose EXIF orientation tag claims 200 bytes at an offset past the end of the file."""
    entry = struct.pack("<HHII", 0x0112, 3, 100, 4000)  # tag, type SHORT, count, offset
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + entry + struct.pack("<I", 0)
    return encoded(make_image(0, np.random.default_rng(3)), "JPEG", exif=b"Exif\x00\x00" + tiff)


def test_pillows_notices_about_damaged_metadata_are_not_printed(checkpoint, tmp_path, capsys):
    """Found by the fuzzer: Pillow's "Tag data larger than file" warning went to predict's output, two lines for
    each decode (with a line of Pillow's source), while the image itself decodes."""
    assert bounded_decode(jpeg_with_corrupt_exif(), 32).shape == (32, 32, 3)  # no warning recorded
    (tmp_path / "exif.jpg").write_bytes(jpeg_with_corrupt_exif())
    with warnings.catch_warnings(record=True) as caught:
        code, out, err = run_main(capsys, "predict", tmp_path, "--checkpoint", checkpoint, "--format", "csv", "--cpu")
    assert code == 0 and not caught and re.fullmatch(r"judged 1 of 1 image\(s\): \d FAKE, \d REAL", err.strip()), err


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_as_pillows_exif_transpose_does(orientation):
    """The decoder reads the orientation itself (to silence Pillow's EXIF warnings): same pixels as Pillow's own."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(make_image(1, np.random.default_rng(4)).crop((0, 0, 32, 20)), "PNG", exif=exif)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert np.array_equal(bounded_decode(data, None), np.asarray(expected))


def test_an_opaque_palette_image_claiming_8000x8000_pixels_takes_no_rgba_copies():
    """Found by the fuzzer: a 3 KB GIF whose header claims 8000x8000 pixels made the decoder allocate 1.3 GB (its
    opaque palette went through full-size RGBA copies for alpha compositing); now 0.3 GB, the same pixels. Counted
    in Pillow's own allocator (blocks of 16 MB): exact, unlike the process's RSS."""
    data = bytearray(SEEDS["gif"])
    struct.pack_into("<HH", data, 6, 8000, 8000)  # the logical screen; the frame itself stays 32x32
    Image.core.reset_stats()
    assert decode_rgb(bytes(data)).shape == (8000, 8000, 3)
    allocated_mb = Image.core.get_stats()["allocated_blocks"] * Image.core.get_block_size() / 2**20
    assert allocated_mb <= 8000 * 8000 * (1 + 4) / 2**20 + 16  # the palette image, its RGB copy (4 bytes a pixel)


@fuzz_settings(examples=2000)
@given(mutated_images(), st.sampled_from([None, 32]))
def test_the_decoder_gives_an_image_or_one_error_line_in_bounded_time_and_memory(image, size):
    kind, data = image
    result = bounded_decode(data, size)
    if isinstance(result, str):
        assert result and "\n" not in result and "Traceback" not in result, result
    else:
        assert result.dtype == np.uint8 and result.ndim == 3 and result.shape[2] == 3
        assert size is None or result.shape[:2] == (size, size)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("fuzz-decode") / "best_model.pth")


VALID = {"valid-real.jpg": encoded(make_image(0, np.random.default_rng(1)), "JPEG"),
         "valid-fake.png": encoded(make_image(1, np.random.default_rng(2)), "PNG")}


@fuzz_settings(examples=40)
@given(st.lists(mutated_images(), min_size=1, max_size=4))
def test_predict_on_a_folder_judges_the_valid_files_and_gives_one_line_per_bad_one(checkpoint, capsys, images):
    with tempfile.TemporaryDirectory() as folder:
        files = {**VALID, **{f"mutated-{index}{EXTENSIONS[kind]}": data for index, (kind, data) in enumerate(images)}}
        for name, data in files.items():
            (Path(folder) / name).write_bytes(data)
        code, out, err = run_main(capsys, "predict", folder, "--checkpoint", checkpoint, "--format", "json",
                                  "--cpu", "--quiet")
    rows = {Path(row["path"]).name: row for row in map(json.loads, out.splitlines())}
    assert rows.keys() == files.keys() and err == "" and "Traceback" not in out
    assert all(rows[name]["label"] in {"REAL", "FAKE"} for name in VALID)
    errors = [row["error"] for row in rows.values() if row["error"] is not None]
    assert all(error and "\n" not in error for error in errors)
    assert code == (1 if errors else 0)


@pytest.fixture(scope="module")
def client(checkpoint):
    pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
    from serve_support import serving
    from vitdetect import Detector

    with serving(Detector.from_checkpoint(checkpoint), checkpoint) as client:
        yield client


@fuzz_settings(examples=200)
@given(st.lists(mutated_images(), min_size=1, max_size=4), st.booleans(), st.booleans())
def test_the_upload_path_answers_200_with_per_file_errors_or_a_4xx(client, images, with_valid, raw):
    files = {**(VALID if with_valid else {}), **{f"m{index}{EXTENSIONS[kind]}": data
                                                 for index, (kind, data) in enumerate(images)}}
    if raw:  # one file as the raw body
        response = client.post("/v1/predict", content=images[0][1], headers={"content-type": "image/png"})
        files = {"body": images[0][1]}
    else:
        response = client.post("/v1/predict", files=[("files", (name, data)) for name, data in files.items()])
    assert response.status_code in {200, 413, 422}, response.text
    if response.status_code != 413:  # a file that grew past the 1 MB test limit
        results = response.json()["results"]
        assert [result["name"] for result in results] == list(files)
        assert all((result["label"] is None) == bool(result["error"]) for result in results)
        assert (response.status_code == 200) == any(result["label"] for result in results)
