"""Fuzz vitrina.io.images.read_image_bytes and read_image (the same bytes from a file).

Oracle: the only exception is ImageReadError; an accepted image is loaded, in the asked mode,
non-empty and within max_pixels; and bytes that Pillow itself cannot decode are refused (no
"wrong acceptance": a corrupt file must never become an image with a confident label).

    python fuzz/fuzz_images.py [libFuzzer flags] CORPUS_DIR [SEED_DIR]
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

import atheris

with atheris.instrument_imports(include=["vitrina", "PIL"]):
    from _common import CHECK_KNOWN, pillow_refuses

    from vitrina.errors import ImageReadError
    from vitrina.io.images import read_image, read_image_bytes

MAX_PIXELS = 4_000_000  # keeps each input fast; the limit itself is part of what is checked
_TMP: str | None = None  # made on first use; the regression tests set it to their own folder


def _tmp() -> str:
    global _TMP
    if _TMP is None:
        _TMP = tempfile.mkdtemp(prefix="vitrina-fuzz-")
        atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
    return _TMP


_EXTS = (".png", ".jpg", ".gif", ".webp", ".tif", ".bmp", ".ppm")


def check(data: bytes) -> None:
    if not data:
        return
    mode = "L" if data[0] & 1 else "RGB"
    from_file = bool(data[0] & 2)
    min_side = 8 if data[0] & 4 else None
    try:
        if from_file:
            path = os.path.join(_tmp(), "input" + _EXTS[data[0] % len(_EXTS)])
            with open(path, "wb") as f:
                f.write(data)
            im = read_image(path, mode=mode, max_pixels=MAX_PIXELS, min_side=min_side)
        else:
            im = read_image_bytes(data, mode=mode, max_pixels=MAX_PIXELS, min_side=min_side)
    except ImageReadError as e:
        assert e.reason and "\n" not in str(e), f"error message not one line: {e!r}"
        return
    assert im.mode == mode, (im.mode, mode)
    w, h = im.size
    assert w > 0 and h > 0 and w * h <= MAX_PIXELS, im.size
    assert im.tobytes(), "an image without pixels"
    if CHECK_KNOWN and pillow_refuses(data):  # issue 13 defect 1
        raise AssertionError("wrong acceptance: Pillow cannot decode these bytes, vitrina did")


def main() -> None:
    atheris.Setup(sys.argv, lambda data: check(bytes(data)))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
