"""Fuzz the service's upload decoding (vitrina.service.uploads.decode_upload).

Oracle: bad bytes are a ServiceError 400 ``bad_image`` with a one-line message (the route
turns it into a JSON error); nothing else escapes; an accepted image is loaded and within the
service's MAX_PIXELS; bytes Pillow cannot decode are refused.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["vitrina", "PIL"]):
    from _common import CHECK_KNOWN, pillow_refuses

    from vitrina.service.errors import ServiceError
    from vitrina.service.uploads import MAX_PIXELS, decode_upload


def check(data: bytes) -> None:
    try:
        im = decode_upload(data, mode="RGB", min_side=None, name="photo")
    except ServiceError as e:
        assert e.status == 400 and e.code == "bad_image", (e.status, e.code)
        assert "\n" not in e.message and e.message.startswith("photo: "), e.message
        return
    w, h = im.size
    assert im.mode == "RGB" and w > 0 and h > 0 and w * h <= MAX_PIXELS
    if CHECK_KNOWN and pillow_refuses(data):  # issue 13 defect 1
        raise AssertionError("wrong acceptance: Pillow cannot decode these bytes, the service did")


def main() -> None:
    atheris.Setup(sys.argv, lambda data: check(bytes(data)))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
