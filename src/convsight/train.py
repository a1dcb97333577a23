"""One training loop for every model: Adam, cross-entropy, accuracy per epoch."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.data import DataLoader

from convsight.errors import ConvsightError
from convsight.progress import progress_bar


class TrainingDiverged(ConvsightError):
    """The loss became NaN or infinite: the run stops and writes no checkpoint."""


def check_lr(lr: float) -> None:
    """Refuse a learning rate that cannot train (negative, zero, NaN or infinite)."""
    if not (math.isfinite(lr) and lr > 0):
        raise ConvsightError(f"--lr must be a positive finite number, not {lr}")


def _check_finite(loss: float, lr: float, where: str) -> None:
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"training diverged: {where} is {loss} with learning rate {lr:g}, so no "
            "checkpoint is written; try a lower --lr"
        )


@dataclass
class EpochResult:
    """Figures of one epoch."""

    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    seconds: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@torch.no_grad()
def evaluate(
    module: nn.Module, loader: DataLoader, device: str | torch.device = "cpu"
) -> tuple[float, float, torch.Tensor]:
    """Mean cross-entropy, accuracy and the predicted class of every example in ``loader``."""
    module.eval()
    loss_sum, predictions = 0.0, []
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = module(x)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        pred = logits.argmax(1)
        predictions.append(pred.cpu())
        correct += int((pred == y).sum())
        total += len(y)
    return loss_sum / max(total, 1), correct / max(total, 1), torch.cat(predictions)


def _train_mode(module: nn.Module) -> None:
    """Train mode, except for frozen parts: a frozen backbone keeps its batch-norm statistics."""
    module.train()
    for sub in module.modules():
        own = list(sub.parameters(recurse=False))
        if own and not any(p.requires_grad for p in own):
            sub.eval()


def _train_epoch(module, loader, optimizer, device, lr: float, epoch: int, report):
    """One pass over ``loader``; the summed loss, the number right and the number seen.
    ``report(status=...)`` receives the running loss and accuracy after every step."""
    _train_mode(module)
    loss_sum = 0.0
    correct = total = 0
    for step, (x, y) in enumerate(loader, 1):
        x, y = x.to(device), y.to(device)
        logits = module(x)
        loss = nn.functional.cross_entropy(logits, y)
        value = loss.item()
        _check_finite(value, lr, f"the training loss at epoch {epoch}, step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += value * len(y)
        correct += int((logits.argmax(1) == y).sum())
        total += len(y)
        report(status=f"loss {loss_sum / total:.4f} acc {correct / total:.4f}")
    return loss_sum, correct, total


def fit(
    module: nn.Module,
    train_loader: DataLoader,
    test_loader: DataLoader,
    epochs: int,
    lr: float = 1e-3,
    device: str | torch.device = "cpu",
    show_progress: bool = True,
    parameters: list[nn.Parameter] | None = None,
) -> list[EpochResult]:
    """Train with Adam on cross-entropy; evaluate on ``test_loader`` after every epoch.

    ``parameters`` restricts what is trained (a new head when fine-tuning).
    """
    check_lr(lr)
    module.to(device)
    params = parameters if parameters is not None else [p for p in module.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    history: list[EpochResult] = []
    with progress_bar(show_progress) as bar:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            task = bar.add_task(f"epoch {epoch}/{epochs}", total=len(train_loader), status="")
            report = partial(bar.update, task, advance=1)
            loss_sum, correct, total = _train_epoch(
                module, train_loader, optimizer, device, lr, epoch, report
            )
            test_loss, test_acc, _ = evaluate(module, test_loader, device)
            _check_finite(test_loss, lr, f"the test loss after epoch {epoch}")
            history.append(
                EpochResult(
                    epoch=epoch,
                    train_loss=loss_sum / max(total, 1),
                    train_accuracy=correct / max(total, 1),
                    test_loss=test_loss,
                    test_accuracy=test_acc,
                    seconds=time.perf_counter() - start,
                )
            )
            bar.update(
                task,
                status=f"loss {loss_sum / max(total, 1):.4f} acc {correct / max(total, 1):.4f} "
                f"test acc {test_acc:.4f}",
            )
    module.eval()
    return history
