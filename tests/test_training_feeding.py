"""Where training decodes its photos: a cost model fed by the run's own first epoch."""

from __future__ import annotations

import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from vitrina.engine import default_workers
from vitrina.training import feeding
from vitrina.training.feeding import MeasuredLoader, best_workers, training_loader


class _Slow(Dataset):
    """Items that take ``delay`` seconds each to "decode"."""

    def __init__(self, n: int, delay: float = 0.0) -> None:
        self.n, self.delay = n, delay

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.delay:
            time.sleep(self.delay)
        return torch.tensor([i])


def _epoch(loader, step_s: float = 0.0) -> list[int]:
    seen = []
    for b in loader:
        seen += b.flatten().tolist()
        if step_s:
            time.sleep(step_s)
    return seen


def test_the_cost_model_keeps_decoding_in_process_when_the_step_dominates() -> None:
    # a Lite0 fine-tune on 2 cores: 0.1 s decoding, 2 s step with 2 threads
    assert best_workers(0.1, 2.0, cores=2, threads=2) == 0
    # decoding as long as the step: one process halves nothing once the step loses a thread
    assert best_workers(1.0, 1.0, cores=2, threads=2) == 0
    # a small net waiting on decoding: on 2 cores a process pays only by overlapping the
    # step (decoding alone has one core either way); on more cores, as many as pay
    assert best_workers(1.0, 0.3, cores=2, threads=2) == 1
    assert best_workers(1.0, 0.05, cores=2, threads=2) == 0
    assert best_workers(1.0, 0.05, cores=8, threads=8) == 4
    # a net too small to use threads loses nothing when a process takes a core
    assert best_workers(0.2, 0.15, cores=2, threads=1) == 1
    # one core: nothing to give away
    assert best_workers(5.0, 0.01, cores=1, threads=1) == 0


def test_measured_loader_gives_the_plain_loaders_batches_in_its_order() -> None:
    ds = _Slow(23)
    plain = DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3))
    measured = training_loader(
        ds,
        num_workers=None,
        device=torch.device("cpu"),
        batch_size=4,
        shuffle=True,
        generator=torch.Generator().manual_seed(3),
    )
    assert isinstance(measured, MeasuredLoader)
    assert len(measured) == len(plain)
    for _ in range(3):  # the measuring epoch, then the chosen way
        assert _epoch(measured) == _epoch(plain)


def test_slow_decoding_and_a_quick_step_get_processes(monkeypatch) -> None:
    monkeypatch.setattr(feeding, "available_cores", lambda: 4)
    loader = MeasuredLoader(_Slow(40, delay=0.01), batch_size=4)
    first = _epoch(loader)
    assert loader.decided and loader.num_workers >= 2, loader.plan
    assert "process" in loader.plan and "ms decoding" in loader.plan
    threads = torch.get_num_threads()
    assert sorted(_epoch(loader)) == sorted(first) == list(range(40))
    assert torch.get_num_threads() == threads  # given back after the epoch


def test_a_heavy_step_keeps_decoding_in_this_process(monkeypatch) -> None:
    monkeypatch.setattr(feeding, "available_cores", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    loader = MeasuredLoader(_Slow(20), batch_size=2)
    _epoch(loader, step_s=0.02)
    assert loader.decided and loader.num_workers == 0
    assert "in this process" in loader.plan


def test_a_run_stopped_at_once_measures_again_next_epoch() -> None:
    loader = MeasuredLoader(_Slow(20), batch_size=2)
    for _ in loader:
        break
    assert not loader.decided
    assert _epoch(loader) == list(range(20))
    assert loader.decided


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_given_workers_and_gpus_keep_plain_loaders(device: str) -> None:
    ds = _Slow(50)
    given = training_loader(ds, num_workers=3, device=torch.device(device), batch_size=4)
    assert type(given) is DataLoader and given.num_workers == 3
    chosen = training_loader(ds, num_workers=None, device=torch.device(device), batch_size=4)
    expected = 0 if device == "cpu" else default_workers()
    assert chosen.num_workers == expected
    assert isinstance(chosen, MeasuredLoader) == (device == "cpu")


def test_a_set_of_one_batch_decodes_in_this_process() -> None:
    loader = training_loader(_Slow(4), num_workers=5, device=torch.device("cpu"), batch_size=8)
    assert type(loader) is DataLoader and loader.num_workers == 0


def test_a_run_records_where_it_decoded(tmp_path) -> None:
    import json

    from conftest import make_dataset, toy_config
    from vitrina.training import train_classifier

    data = make_dataset(tmp_path / "data", per_class=12)
    # augmented: decoded every epoch (unaugmented small sets are decoded once, into memory)
    cfg = toy_config(
        data, tmp_path / "run", epochs=2, num_workers=None, batch_size=4, augment="light"
    )
    res = train_classifier(cfg, progress=False)
    doc = json.loads((res.run_dir / "vitrina.json").read_text())
    assert doc["metrics"]["decoding"].startswith("decoding: in ")
    assert "ms decoding" in doc["metrics"]["decoding"]
    lines = (res.run_dir / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["decode_processes"] == 0  # the measuring epoch
