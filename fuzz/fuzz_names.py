"""Fuzz the name parsers: Market-1501 file names (vitrina.data.identities), class-folder names
(vitrina.data.check_class_name) and person names (vitrina.faces.gallery.check_person_name).

Oracle: only DataError / GalleryError escape; a parsed Market name formats back to fields
that match it; an accepted class or person name is a single path component that can be
created on disk: encodable as UTF-8, at most 255 bytes, no separator, not '.'/'..'.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["vitrina"]):
    from _common import CHECK_KNOWN

    from vitrina.data import check_class_name
    from vitrina.data.identities import parse_market_name
    from vitrina.errors import DataError
    from vitrina.faces.gallery import GalleryError, check_person_name


def _storable(name: str) -> None:
    assert name not in (".", "..") and "/" not in name and "\x00" not in name, repr(name)
    if CHECK_KNOWN:  # issue 13 defect 9
        raw = name.encode("utf-8")  # UnicodeEncodeError: a lone surrogate was accepted
        assert len(raw) <= 255, f"{len(raw)} bytes: the file system refuses the name"


def check(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    which = fdp.ConsumeIntInRange(0, 2)
    text = fdp.ConsumeUnicodeNoSurrogates(200) if fdp.ConsumeBool() else fdp.ConsumeUnicode(200)
    if which == 0:
        try:
            m = parse_market_name(text)
        except DataError:
            return
        assert m.camid >= 0 and m.seq >= 0 and m.frame >= 0 and m.box >= 0
        assert m.pid >= -1
    elif which == 1:
        try:
            check_class_name(text)
        except DataError:
            return
        _storable(text)
    else:
        try:
            check_person_name(text)
        except GalleryError:
            return
        _storable(text)


def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
