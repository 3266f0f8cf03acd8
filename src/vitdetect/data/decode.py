"""Turning any image file into an RGB uint8 array: the single decoder for train, evaluate and predict."""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageFile

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})

# Truncated files must fail, not decode half-grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# warnings.catch_warnings swaps process-wide state: decoding threads take turns while opening and reading EXIF.
_OPEN_LOCK = threading.Lock()
# EXIF orientation -> the transposition that displays the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


class ImageDecodeError(Exception):
    """The file is not an image we can safely decode; the message says why in a few words."""


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any mode: alpha composited on white, 16-bit scaled to 8-bit, CMYK/palette/grey converted."""
    if image.mode in {"I;16", "I;16B", "I;16L", "I"}:
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and ("transparency" in image.info or image.palette.mode == "RGBA"):
        image = image.convert("RGBA")  # an opaque palette goes straight to RGB: same pixels, no full-size RGBA copies
    if image.mode in {"RGBA", "LA", "PA"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(source: str | Path | bytes) -> Image.Image:
    """Image.open (header only) with Pillow's decompression-bomb warning raised as an error, and its other warnings
    silenced: a file opens or fails with one error, never with extra lines of Pillow's."""
    with _pillow_quiet():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


@contextmanager
def _pillow_quiet() -> Iterator[None]:
    """Pillow's warnings silenced, for the steps that parse headers and metadata (open, seek, EXIF): it warns about
    each damaged tag it skips ("Corrupt EXIF data", two lines on stderr per file), while the image itself decodes
    or fails with one ImageDecodeError. Under the lock: warning filters are process-wide."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _first_frame_rgb(image: Image.Image) -> Image.Image:
    with _pillow_quiet():
        image.seek(0)  # a TIFF re-reads its tags
    image.load()
    with _pillow_quiet():  # after load: a PNG's eXIf chunk may follow its pixels
        upright = _UPRIGHT.get(image.getexif().get(ExifTags.Base.Orientation, 1))
    return _to_rgb(image.transpose(upright) if upright is not None else image)


def decode_rgb(source: str | Path | bytes | Image.Image, size: int | None = None) -> np.ndarray:
    """Decode one image (path, bytes or PIL image) to an HxWx3 uint8 array, resized to size x size when given.

    EXIF orientation is applied, GIFs give their first frame, and images over Pillow's
    decompression-bomb limit are refused rather than decoded.
    """
    try:
        if isinstance(source, Image.Image):
            rgb = _first_frame_rgb(source)
        else:
            with open_image(source) as image:
                rgb = _first_frame_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError("image too large to decode safely (decompression-bomb limit)") from None
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except IsADirectoryError:
        raise ImageDecodeError("is a directory") from None
    except Image.UnidentifiedImageError:
        empty = not source if isinstance(source, bytes) else Path(source).stat().st_size == 0
        raise ImageDecodeError("empty file" if empty else "not an image (or an unsupported format)") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many types (struct.error, ...) on hostile files
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageDecodeError(f"cannot decode image: {detail}") from None
    if size is not None and rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)
