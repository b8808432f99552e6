"""Safe image decoding: every bad file becomes an :class:`ImageReadError`, never a crash.

``read_image`` returns a fully loaded, EXIF-oriented RGB (or L) image detached from its file.
It refuses oversized images from the header, before any pixel memory is allocated, and it
never flips process-wide Pillow switches (``LOAD_TRUNCATED_IMAGES``, ``MAX_IMAGE_PIXELS``).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from vitrina.errors import ImageReadError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "IMAGE_EXTENSIONS_TEXT",
    "file_digest",
    "image_size",
    "is_image_path",
    "read_image",
    "read_image_bytes",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".png",
        ".bmp",
        ".gif",
        ".webp",
        ".tif",
        ".tiff",
        ".pgm",
        ".ppm",
        ".pbm",
        ".pnm",
        ".avif",  # phones (Android, recent iPhones); Pillow's own AVIF plugin
        ".heic",  # iPhone photos; decoded by pillow-heif (libheif)
        ".heif",
    }
)

#: The extensions as one line for messages ("looked for .avif, .bmp, ...").
IMAGE_EXTENSIONS_TEXT = ", ".join(sorted(IMAGE_EXTENSIONS))

DEFAULT_MAX_PIXELS = 120_000_000

# Only the decoders behind IMAGE_EXTENSIONS: letting Pillow sniff every format it knows would
# e.g. hand a renamed .eps to Ghostscript. (Camera MPO files open through "JPEG".) "HEIF" is
# pillow-heif's opener, registered on first use (:func:`_register_heif`).
_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM", "AVIF", "HEIF")
_HEIF_SUFFIXES = (".heic", ".heif")

_CORRUPT = "truncated or corrupt image data"
_NOT_IMAGE = "not an image (unrecognised format)"
_IS_FOLDER = "is a folder, not an image file"

# EXIF orientation -> the transpose that undoes it (same table as ImageOps.exif_transpose).
_ORIENTATION_OPS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_CHUNK = 1 << 20


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` has an image extension (any case) and is not a hidden file."""
    name = Path(path).name
    if not name or name.startswith("."):
        return False
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def read_image(
    path: str | os.PathLike[str],
    *,
    mode: str = "RGB",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
) -> Image.Image:
    """Decode ``path`` into a loaded, EXIF-oriented image in ``mode`` ("RGB" or "L").

    ``min_side``: the caller will shrink the image so its short side is this long; a JPEG may
    then be decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (Pillow's ``draft``), never
    below ``min_side``. A 12-megapixel photo decodes 2.6x faster (130 -> 50 ms) for a 224-pixel model.

    Raises :class:`ImageReadError` (naming the file and the problem) for anything that is not
    a readable image within ``max_pixels``.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', not {mode!r}")
    p = Path(path)
    with _open_file(p) as fh:
        return _decode(p, fh, mode, max_pixels, min_side)


def read_image_bytes(
    data: bytes,
    *,
    name: str = "upload",
    mode: str = "RGB",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
) -> Image.Image:
    """:func:`read_image` for an image held in memory (e.g. an HTTP upload), with the same
    checks: only the decoders of ``IMAGE_EXTENSIONS``, ``max_pixels`` enforced from the
    header, truncated data refused. ``name`` stands for the file in error messages."""
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', not {mode!r}")
    if not data:
        raise ImageReadError(name, "empty file (0 bytes)")
    return _decode(Path(name), io.BytesIO(data), mode, max_pixels, min_side)


def image_size(
    path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[int, int]:
    """(width, height) as displayed (EXIF rotation applied), read from the header only."""
    p = Path(path)
    with _open_file(p) as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with _identify(p, fh, max_pixels) as im:
            width, height = im.size
            if _orientation(im) in (5, 6, 7, 8):  # the 90-degree rotations swap the axes
                width, height = height, width
    return width, height


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of the file's bytes, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- internals


def _decode(p: Path, fh: BinaryIO, mode: str, max_pixels: int, min_side: int | None) -> Image.Image:
    """The body of :func:`read_image` once the file is open (``p`` names it in errors)."""
    with warnings.catch_warnings():
        # Our own max_pixels check below is the limit; Pillow's warning fires at a lower,
        # unrelated threshold (~89 MP) and would otherwise reject 100 MP camera photos.
        # Pillow's hard DecompressionBombError is still caught and reported.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = _identify(p, fh, max_pixels)
        try:
            if im.format == "JPEG":
                # A JPEG's EXIF is in its header: reading it loads no pixels (unlike a PNG's,
                # see below), so the fast decoder's output can be turned before returning.
                fast = _turbo_decode(p, fh, im, mode, min_side)
                if fast is not None:
                    op = _ORIENTATION_OPS.get(_orientation(im))
                    return fast.transpose(op) if op is not None else fast
            if min_side and im.format == "JPEG" and min(im.size) >= 2 * min_side:
                im.draft(im.mode, (min_side, min_side))
            try:
                im.load()  # first frame only for GIF / animated WebP / MPO
            except Image.DecompressionBombError as exc:  # e.g. an oversized GIF frame
                raise ImageReadError(p, f"image too large (limit {max_pixels:,} pixels)") from exc
            except MemoryError as exc:
                raise ImageReadError(p, "image too large to decode (out of memory)") from exc
            except Exception as exc:
                # Pillow reports bad pixel data with OSError, SyntaxError, ValueError,
                # EOFError, struct.error, ... by plugin; for a user they all mean the same.
                raise ImageReadError(p, _CORRUPT) from exc
            # Only after load(): Pillow's PNG getexif() loads the pixels itself, and a decode
            # error swallowed there left an empty (black) image that a second load() accepted.
            orientation = _orientation(im)
            try:
                out = _normalise(im, mode)
            except MemoryError as exc:
                raise ImageReadError(p, "image too large to decode (out of memory)") from exc
            except Exception as exc:
                raise ImageReadError(p, f"unsupported colour mode {im.mode}") from exc
        finally:
            im.close()
    op = _ORIENTATION_OPS.get(orientation)
    return out.transpose(op) if op is not None else out


def _turbo_decode(
    p: Path, fh: BinaryIO, im: Image.Image, mode: str, min_side: int | None
) -> Image.Image | None:
    """Decode a baseline/progressive JPEG with libjpeg-turbo through simplejpeg, when it is
    installed and the file is a plain JPEG in the requested colours (YCbCr -> RGB, grey ->
    L); ``None`` sends everything else (CMYK, MPO, colour conversions) to Pillow.

    Why: simplejpeg skips part of Pillow's per-image work: decoding a cats/dogs photo
    (~500x375) costs 0.88 ms of CPU instead of Pillow's 1.35 ms. A large photo is scaled in
    the DCT domain by the same power-of-two factors as Pillow's ``draft`` (see below for why
    not libjpeg-turbo's other M/8 scales), so the pixels are Pillow's. The header was already parsed and the pixel limit enforced by
    :func:`_identify`; recoverable libjpeg errors (a truncated file) raise (``strict``), so a
    corrupt file stays an :class:`ImageReadError`, as with Pillow."""
    if _simplejpeg is None or im.format != "JPEG" or (im.mode, mode) not in _TURBO_MODES:
        return None
    try:
        fh.seek(0)
        data = fh.read()
        # Only the scales of Pillow's draft (1/2, 1/4, 1/8), the largest reduction that keeps
        # min_side: scaling by 7/8..5/8 costs more than a full decode (1.29 vs 0.88 ms per
        # photo), and the odd scales (3/8) put 3.6-4.1 grey levels of mean error into the
        # model's input against torchvision's full-size resize (1/2: 0.45).
        factor = 1
        while min_side and factor < 8 and min(im.size) >= 2 * factor * min_side:
            factor *= 2
        w, h = im.size
        arr = _simplejpeg.decode_jpeg(
            data,
            colorspace=_TURBO_MODES[(im.mode, mode)],
            min_height=-(-h // factor) if factor > 1 else 0,
            min_width=-(-w // factor) if factor > 1 else 0,
        )
    except MemoryError as exc:
        raise ImageReadError(p, "image too large to decode (out of memory)") from exc
    except Exception as exc:  # ValueError from libjpeg: corrupt or truncated data
        raise ImageReadError(p, _CORRUPT) from exc
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.ascontiguousarray(arr[:, :, 0])
    h, w = arr.shape[:2]
    # frombuffer shares the decoded array (no copy); the image keeps it alive.
    return Image.frombuffer(mode, (w, h), arr, "raw", mode, 0, 1)


try:  # optional: the fast JPEG path (pip install simplejpeg)
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - Pillow decodes everything without it
    _simplejpeg = None

_TURBO_MODES = {("RGB", "RGB"): "RGB", ("L", "L"): "GRAY"}


def _open_file(path: Path) -> BinaryIO:
    """Open a regular, non-empty file for reading or raise :class:`ImageReadError`."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise ImageReadError(path, _IS_FOLDER)
        if not stat.S_ISREG(st.st_mode):
            # A FIFO or device would block or never end.
            kind = "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
            raise ImageReadError(path, f"is {kind}, not an image file")
        if st.st_size == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
        return open(path, "rb")  # closed by the caller's with-block
    except OSError as exc:
        raise ImageReadError(path, _os_reason(exc)) from exc


def _os_reason(exc: OSError) -> str:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return "file not found"
    if exc.errno == errno.EISDIR:
        return _IS_FOLDER
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return f"cannot read file ({exc.strerror or exc})"


def _identify(path: Path, fh: BinaryIO, max_pixels: int) -> Image.Image:
    """Parse the header only and enforce ``max_pixels`` before any pixel is decoded."""
    try:
        im = Image.open(fh, formats=_decoders())
    except Image.DecompressionBombError as exc:
        size = _unchecked_header_size(fh)
        detail = f"{size[0]}x{size[1]} pixels" if size else "over Pillow's pixel limit"
        raise ImageReadError(path, f"image too large: {detail} (limit {max_pixels:,})") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(path, _unrecognised(path)) from exc
    except Exception as exc:  # plugins raise assorted types on a malformed header
        raise ImageReadError(path, _CORRUPT) from exc
    width, height = im.size
    if width <= 0 or height <= 0:
        im.close()
        raise ImageReadError(path, _CORRUPT)
    if width * height > max_pixels:
        im.close()
        raise ImageReadError(
            path, f"image too large: {width}x{height} pixels (limit {max_pixels:,})"
        )
    return im


def _decoders() -> list[str]:
    """The formats of ``_FORMATS`` this Pillow build can open (WebP and AVIF support are
    optional in Pillow builds; HEIF comes from pillow-heif)."""
    Image.init()  # registers every plugin once; a no-op afterwards
    _register_heif()
    return [fmt for fmt in _FORMATS if fmt in Image.OPEN]


_heif_state: list[bool] = []  # [registered?] once tried


def _register_heif() -> bool:
    """Register pillow-heif's HEIC/HEIF opener with Pillow, once per process, on the first
    decode (importing libheif costs ~30 ms that a run without iPhone photos need not pay).
    libheif applies the container's rotation and mirroring itself and pillow-heif then
    reports EXIF orientation 1, so :func:`_orientation` never turns a HEIC photo twice."""
    if not _heif_state:
        try:
            import pillow_heif
        except ImportError:
            _heif_state.append(False)
        else:
            pillow_heif.register_heif_opener()
            _heif_state.append(True)
    return _heif_state[0]


def _unrecognised(path: Path) -> str:
    """Why a file did not open: a HEIC photo without pillow-heif says what to install."""
    if path.suffix.lower() in _HEIF_SUFFIXES and not _register_heif():
        return "HEIC/HEIF photo, but pillow-heif is not installed: pip install pillow-heif"
    if path.suffix.lower() == ".avif" and "AVIF" not in Image.OPEN:
        return "AVIF photo, but this Pillow build has no AVIF decoder: pip install -U pillow"
    return _NOT_IMAGE


def _unchecked_header_size(fh: BinaryIO) -> tuple[int, int] | None:
    """Header size for the error message when Pillow's bomb check refused to return it."""
    try:
        fh.seek(0)
        prefix = fh.read(16)
        for fmt in _decoders():
            factory, accept = Image.OPEN[fmt]
            if accept is not None and not accept(prefix):
                continue
            fh.seek(0)
            try:
                return factory(fh, "").size  # header parse only; no pixels allocated
            # A decoder that cannot parse it: try the next (this only words an error message).
            except Exception:  # nosec B112
                continue
    except Exception:
        return None
    return None


def _orientation(im: Image.Image) -> int:
    """EXIF orientation 1..8; a broken EXIF block means 'as stored', not an unreadable file."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
        return int(value) if int(value) in _ORIENTATION_OPS else 1
    except Exception:
        return 1


def _normalise(im: Image.Image, mode: str) -> Image.Image:
    """Convert any decoded mode to ``mode`` without clipping, and without alpha garbage."""
    src = im.mode
    if src in _SIXTEEN_BIT_MODES:
        # convert("L") clips at 255, turning every 16-bit value above 255 white.
        arr = np.clip(np.asarray(im, dtype=np.int64), 0, 65535) >> 8
        out = Image.fromarray(arr.astype(np.uint8))
    elif src == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        if arr.size and float(arr.max()) <= 1.0:  # a [0, 1] float image
            arr = np.clip(arr, 0.0, 1.0) * 255.0
        else:
            arr = np.clip(arr, 0.0, 255.0)
        out = Image.fromarray(np.rint(arr).astype(np.uint8))
    elif src in _ALPHA_MODES or "transparency" in im.info:
        # Transparent pixels may hold any colour; composite over white instead of dropping alpha.
        rgba = im.convert("RGBA")
        out = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out.alpha_composite(rgba)
        out = out.convert("RGB")
    elif src in ("L", "RGB"):
        out = im.copy()  # detach from the file even when no conversion is needed
    elif mode == "L" and src == "1":
        out = im.convert("L")
    else:
        out = im.convert("RGB")  # 1, P, CMYK (incl. Adobe-inverted JPEG), YCbCr, ...
    return out if out.mode == mode else out.convert(mode)
