"""The made shifts a judgement also looks at (:mod:`vitrina.data.shifts`)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vitrina.data.shifts import SHIFTS, relit, rescaled, shifted


def photo(w: int = 60, h: int = 40, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(40, 216, (h, w, 3), dtype=np.uint8))


@settings(max_examples=40, deadline=None)
@given(
    w=st.integers(1, 80),
    h=st.integers(1, 80),
    mode=st.sampled_from(["RGB", "L", "RGBA"]),
    name=st.sampled_from(sorted(SHIFTS)),
)
def test_every_shift_keeps_the_size_and_gives_rgb(w: int, h: int, mode: str, name: str) -> None:
    img = photo(w, h).convert(mode)
    out = SHIFTS[name](img)
    assert out.size == (w, h) and out.mode == "RGB"
    assert np.array_equal(np.asarray(SHIFTS[name](img)), np.asarray(out))  # no randomness


def test_relit_darkens_towards_the_right_to_30_percent() -> None:
    grey = Image.new("RGB", (101, 10), (200, 200, 200))
    a = np.asarray(relit(grey), dtype=np.float32)[..., 0].mean(0)
    assert a[0] == pytest.approx(200, abs=1) and a[-1] == pytest.approx(60, abs=1)
    assert np.all(np.diff(a) <= 0)


def test_shifted_moves_the_photo_right_and_down_by_a_fifth() -> None:
    img = photo(50, 40)
    a, b = np.asarray(img), np.asarray(shifted(img))
    assert np.array_equal(b[8:, 10:], a[:32, :40])  # 20% of 40 rows, 20% of 50 columns


def test_rescaled_is_a_smaller_photo_on_grey() -> None:
    img = photo(100, 80)
    b = np.asarray(rescaled(img)).astype(int)
    assert np.all(b[0] == 128) and np.all(b[:, 0] == 128)  # the canvas around it
    small = np.asarray(img.resize((55, 44), Image.Resampling.BILINEAR)).astype(int)
    assert np.array_equal(b[18:62, 22:77], small)  # centred: (100-55)//2, (80-44)//2
