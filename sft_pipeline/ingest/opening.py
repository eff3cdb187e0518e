"""Open a local source for reading, whatever its name says.

* A pipe or FIFO (``/dev/stdin`` fed by ``cat``) is read once, into a temporary file, so
  that sniffing never consumes rows and nothing is opened twice (a FIFO would wait forever
  for a second writer). Devices are refused: ``/dev/zero`` never ends.
* Compression is recognised by its magic bytes (gzip, bzip2, xz), not by the file name.
* A UTF-16 or UTF-32 byte order mark makes the text be transcoded: readers always get
  UTF-8 bytes (a UTF-8 BOM is left for them to strip).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import shutil
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

from sft_pipeline.errors import InputError

COMPRESSIONS: dict[bytes, Callable[..., IO[bytes]]] = {
    b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ\x00": lzma.open,
}
# Longest first: the UTF-32-LE mark starts with the UTF-16-LE one. The codecs consume the mark.
BOMS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
        (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))
ZIP_MAGIC = b"PK\x03\x04"
SNIFF_BYTES = 4096
RECODE_CHARS = 1 << 16
SPOOL_PREFIX = "sft-ingest-spool-"


@dataclass(frozen=True)
class Layout:
    """How a file's bytes become UTF-8 text: its decompressor, its BOM encoding, its first bytes."""

    compression: Callable[..., IO[bytes]] | None
    encoding: str | None
    head: bytes  # the first SNIFF_BYTES of what open_utf8 yields


def compression_of(head: bytes) -> Callable[..., IO[bytes]] | None:
    """The opener for compressed data starting with ``head`` (None for plain data).

    >>> compression_of(gzip.compress(b"x")) is gzip.open, compression_of(b'{"a": 1}')
    (True, None)
    """
    for magic, opener in COMPRESSIONS.items():
        if head.startswith(magic) and (opener is not bz2.open or head[3:4].isdigit()):
            return opener
    return None


def bom_encoding(head: bytes) -> str | None:
    """The encoding a UTF-16/32 byte order mark announces (None without one, or for UTF-8's).

    >>> bom_encoding("x".encode("utf-16")), bom_encoding("x".encode("utf-32")), bom_encoding(b"x")
    ('utf-16', 'utf-32', None)
    """
    return next((enc for mark, enc in BOMS if head.startswith(mark)), None)


def sniff_layout(path: Path) -> Layout:
    """Look at the first bytes (decompressed, then transcoded) of a regular file."""
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
    compression = compression_of(head)
    if compression is not None:
        with compression(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    encoding = bom_encoding(head)
    layout = Layout(compression, encoding, head)
    if encoding is not None:
        with open_utf8(path, layout) as fh:
            layout = Layout(compression, encoding, fh.read(SNIFF_BYTES))
    return layout


def open_utf8(path: Path, layout: Layout) -> IO[bytes]:
    """The file's content as UTF-8 bytes (decompressed, transcoded from UTF-16/32 when marked)."""
    raw = layout.compression(path, "rb") if layout.compression else open(path, "rb")
    if layout.encoding is None:
        return raw
    text = io.TextIOWrapper(raw, encoding=layout.encoding, errors="surrogatepass", newline="")
    return io.BufferedReader(Utf8Recoder(text))


class Utf8Recoder(io.RawIOBase):
    """A raw byte stream of UTF-8 over a text stream (lone surrogates pass through as invalid
    UTF-8, which readers then reject row by row).

    >>> io.BufferedReader(Utf8Recoder(io.StringIO("é\\n"))).read()
    b'\\xc3\\xa9\\n'
    """

    def __init__(self, text: IO[str]):
        self._text = text
        self._pending = b""
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._offset >= len(self._pending):
            chunk = self._text.read(RECODE_CHARS)
            if not chunk:
                return 0
            self._pending, self._offset = chunk.encode("utf-8", "surrogatepass"), 0
        n = min(len(buffer), len(self._pending) - self._offset)
        buffer[:n] = self._pending[self._offset:self._offset + n]
        self._offset += n
        return n

    def close(self) -> None:
        self._text.close()
        super().close()


def is_stream(path: Path) -> bool:
    """True for a pipe, FIFO or socket (``/dev/stdin`` fed by ``cat``): readable once only.

    >>> is_stream(Path("/dev/null")), is_stream(Path(__file__))
    (False, False)
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


@contextmanager
def readable_path(path: Path, spec: str) -> Iterator[Path]:
    """``path`` itself, or for a stream a temporary copy (same name) read from it exactly once.
    Devices (a terminal on stdin, ``/dev/zero``, a disk) are refused: they need not ever end."""
    if path.is_char_device() or path.is_block_device():
        raise InputError(f"{spec}: a device, not a data file or pipe")
    if not is_stream(path):
        yield path
        return
    folder = Path(tempfile.mkdtemp(prefix=SPOOL_PREFIX))
    try:
        copy = folder / path.name
        with open(path, "rb") as src, open(copy, "wb") as dst:
            shutil.copyfileobj(src, dst)
        yield copy
    finally:
        shutil.rmtree(folder, ignore_errors=True)
