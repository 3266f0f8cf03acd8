"""Reading the images of a request into memory, within its limits.

The body is counted against the size limit as it arrives (a Content-Length over the limit is refused
before reading). Multipart bodies go through python-multipart's streaming parser straight into
bytes: Starlette's own form parser would spool parts over 1 MB to temporary files, and nothing a
client sends may reach the disk. Nothing here looks at the request path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

FILE_FIELDS = frozenset({b"files", b"file"})  # `curl -F file=@x.jpg` works as well as the documented `files`
RAW_BODY_NAME = "body"
MAX_NAME_CHARS = 255
EXTRA_PARTS = 32  # non-file form fields tolerated (and ignored) besides the images


class ApiError(Exception):
    """An HTTP error answered as JSON: {"error": message, ...}."""

    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    max_files: int
    read_timeout_s: float  # the whole body must arrive within this time

    @property
    def size_text(self) -> str:
        return f"{self.max_bytes / 1e6:g} MB"


@dataclass
class Upload:
    name: str
    data: bytes


async def read_uploads(request, limits: UploadLimits) -> list[Upload]:
    """The images of a multipart (field `files`, repeatable) or raw image request, in order, read within
    limits.read_timeout_s: uvicorn has no such timeout, and a client trickling its body would hold the request
    (and its memory) for as long as it liked."""
    try:
        return await asyncio.wait_for(_read_uploads(request, limits), limits.read_timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(408, f"request body not received within {limits.read_timeout_s:g} s") from None


async def _read_uploads(request, limits: UploadLimits) -> list[Upload]:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limits.max_bytes):
        raise _too_large(limits) if declared.isdigit() else ApiError(400, "invalid Content-Length header")
    content_type, params = parse_options_header(request.headers.get("content-type"))
    body = _limited(request.stream(), limits)
    if content_type == b"multipart/form-data":
        uploads = await _read_multipart(body, params.get(b"boundary"), limits)
    elif content_type.startswith(b"image/") or content_type == b"application/octet-stream":
        uploads = [Upload(RAW_BODY_NAME, b"".join([chunk async for chunk in body]))]
    else:
        shown = content_type.decode("latin-1") or "none"
        raise ApiError(415, f"unsupported content type {shown}: send images as multipart/form-data (field "
                            "'files') or one image as the raw body (image/* or application/octet-stream)")
    if not uploads:
        raise ApiError(422, "no images in the request: send them as multipart/form-data field 'files'")
    return uploads


def _too_large(limits: UploadLimits) -> ApiError:
    return ApiError(413, f"request too large: at most {limits.size_text} per request")


async def _limited(stream: AsyncIterator[bytes], limits: UploadLimits) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > limits.max_bytes:  # a chunked body, or more than Content-Length promised
            raise _too_large(limits)
        yield chunk


async def _read_multipart(body: AsyncIterator[bytes], boundary: bytes | None, limits: UploadLimits) -> list[Upload]:
    if not boundary:
        raise ApiError(400, "multipart/form-data without a boundary")
    parts = _Parts(limits.max_files)
    try:
        parser = MultipartParser(boundary, parts.callbacks())
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise ApiError(400, f"malformed multipart body: {str(exc).splitlines()[0]}") from None
    if not parts.ended:
        raise ApiError(400, "malformed multipart body: it ends before its closing boundary")
    return parts.uploads


@dataclass
class _Parts:
    """python-multipart callbacks that keep each file part of the form in memory."""

    max_files: int
    uploads: list[Upload] = field(default_factory=list)
    ended: bool = False
    _count: int = 0
    _headers: dict[bytes, bytes] = field(default_factory=dict)
    _header: list[bytes] = field(default_factory=lambda: [b"", b""])
    _data: bytearray | None = None  # the current part's bytes; None for a part that is not an image field
    _name: str = ""

    def callbacks(self) -> dict:
        return {"on_part_begin": self._begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end, "on_end": self._end}

    def _begin(self) -> None:
        self._count += 1
        if self._count > self.max_files + EXTRA_PARTS:
            raise ApiError(413, f"too many form fields: at most {self.max_files} images per request")
        self._headers, self._data = {}, None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header[0].strip().lower()] = self._header[1].strip()
        self._header = [b"", b""]

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        field_name = options.get(b"name", b"")
        if field_name not in FILE_FIELDS:
            return
        if len(self.uploads) >= self.max_files:
            raise ApiError(413, f"too many files: at most {self.max_files} images per request")
        self._name = options.get(b"filename", field_name).decode("utf-8", "replace")[:MAX_NAME_CHARS]
        self._data = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._data is not None:
            self._data += data[start:end]

    def _part_end(self) -> None:
        if self._data is not None:
            self.uploads.append(Upload(self._name, bytes(self._data)))

    def _end(self) -> None:
        self.ended = True
