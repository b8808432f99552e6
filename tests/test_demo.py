from __future__ import annotations

from pathlib import Path

import pytest

from vitrina.demo import run_demo
from vitrina.errors import VitrinaError


def test_demo_short_run_writes_and_sorts(tmp_path: Path) -> None:
    r = run_demo(tmp_path / "demo", epochs=2, progress=False)
    assert r.n_heldout == 360
    labelled = tmp_path / "demo" / "digits" / "labelled"
    assert sorted(p.name for p in labelled.iterdir()) == [str(d) for d in range(10)]
    assert sum(1 for _ in labelled.rglob("*.png")) == 1797 - 360
    placed = sum(1 for p in r.sorted_dir.rglob("*.png"))
    assert placed == 360
    assert r.accuracy > 0.5  # two epochs already learn most digits
    # a second demo replaces its own folder, never a user's
    run_demo(tmp_path / "demo", epochs=1, progress=False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    with pytest.raises(VitrinaError, match="not made by `vitrina demo`"):
        run_demo(mine, epochs=1, progress=False)
    assert (mine / "thesis.txt").read_text() == "precious"


@pytest.mark.slow
def test_demo_reaches_97_percent(tmp_path: Path) -> None:
    r = run_demo(tmp_path / "demo", progress=False)
    assert r.accuracy >= 0.97
