"""The moving average of the weights (``detect train --ema``): what it averages, when the
model is the average, and that training goes on from the trained weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitrina.data.dataset import Batch
from vitrina.training.averaging import AveragedWeights
from vitrina.training.loop import Callback, StepOutput, fit


def _batches(n: int, seed: int = 0) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(4, 3, generator=g)
        out.append(Batch(x, torch.randint(0, 2, (4,), generator=g), torch.arange(4), []))
    return out


class _Task:
    """Least squares of a linear layer; records the weight each step starts from and the weight
    each validation sees."""

    def __init__(self) -> None:
        self.step_starts: list[torch.Tensor] = []
        self.validated: list[torch.Tensor] = []

    def set_train_mode(self, model: nn.Module) -> None:
        model.train()

    def step(self, model: nn.Module, batch: Batch) -> StepOutput:
        self.step_starts.append(model.weight.detach().clone())
        loss = (model(batch.images).squeeze(1) - batch.labels.float()).pow(2).mean()
        return StepOutput(loss, len(batch.labels), None)

    def evaluate(self, model: nn.Module, loader) -> dict[str, float]:
        self.validated.append(model.weight.detach().clone())
        return {"val_loss": 0.0}


class _Trained(Callback):
    """The weights after each optimizer step (before the average takes them in)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.after = model, []

    def on_batch_end(self, state) -> None:
        self.after.append(self.model.weight.detach().clone())


def _train(epochs: int = 2, steps: int = 5):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    task, trained = _Task(), _Trained(model)
    average = AveragedWeights(model, decay=0.999, power=0.75)
    start = model.weight.detach().clone()
    fit(
        model,
        task,
        _batches(steps),
        _batches(1, seed=1),
        torch.optim.SGD(model.parameters(), lr=0.1),
        None,
        epochs=epochs,
        callbacks=[trained, average],
        device=torch.device("cpu"),
    )
    return model, task, trained, average, start


def _expected(start: torch.Tensor, after: list[torch.Tensor], average: AveragedWeights):
    """timm's update, by hand: ``ema = decay * ema + (1 - decay) * weights`` after each step."""
    ema, out = start.clone(), []
    for t, w in enumerate(after, start=1):
        d = average.ema.get_decay(t)
        ema = d * ema + (1 - d) * w
        out.append(ema.clone())
    return out


def test_validation_sees_the_average_and_training_goes_on_from_the_trained_weights() -> None:
    model, task, trained, average, start = _train(epochs=2, steps=5)
    expected = _expected(start, trained.after, average)
    assert len(task.validated) == 2
    torch.testing.assert_close(task.validated[0], expected[4])
    torch.testing.assert_close(task.validated[1], expected[9])
    # the average differs from the trained weights (else the test could not tell them apart)
    assert not torch.allclose(task.validated[0], trained.after[4])
    # epoch 2's first step starts from epoch 1's trained weights, not from the average
    torch.testing.assert_close(task.step_starts[5], trained.after[4])
    # when training ends the model keeps the average
    torch.testing.assert_close(model.weight.detach(), expected[9])


def test_the_decay_warms_up_and_is_capped() -> None:
    _, _, _, average, _ = _train(epochs=1, steps=3)
    assert average.ema.get_decay(1) == 0.0  # the first update copies the weights
    decays = [average.ema.get_decay(t) for t in (2, 10, 100, 1000, 10**6)]
    assert decays == sorted(decays) and decays[-1] == pytest.approx(0.999)
    assert average.describe()["steps"] == 3 and 0 < average.decay_now() < 0.999
