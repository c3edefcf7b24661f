"""Schedules for the convergence rate ``kappa`` of Eq. (10).

Schedules belong to the caller, never to the loss: the loss functions take a plain
``kappa`` and the trainer asks a :class:`KappaSchedule` for the value of each epoch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from ._validation import check_choice, check_positive, check_positive_int


def check_epoch(epoch: object) -> int:
    """An epoch number for a schedule: an ``int >= 0`` (epochs are 1-based; 0 is before training)."""
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        raise TypeError(f"epoch must be an int, got {type(epoch).__name__} {epoch!r}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return epoch


__all__ = ["KappaSchedule", "ConstantKappa", "KappaWarmup", "constant_kappa"]


class KappaSchedule(ABC):
    """``epoch -> kappa`` (epochs are 1-based), the rate of Eq. (10) used in that epoch."""

    @abstractmethod
    def __call__(self, epoch: int) -> float:
        """The rate for ``epoch``."""

    @property
    @abstractmethod
    def final(self) -> float:
        """The rate after the schedule ends (used for evaluation and Appendix-B sizing)."""


@dataclass(frozen=True, kw_only=True)
class ConstantKappa(KappaSchedule):
    """The same ``kappa`` every epoch (Eq. 10 as in the paper)."""

    value: float

    def __post_init__(self) -> None:
        check_positive("value", self.value)

    def __call__(self, epoch: int) -> float:
        check_epoch(epoch)
        return self.value

    @property
    def final(self) -> float:
        return self.value


@dataclass(frozen=True, kw_only=True)
class KappaWarmup(KappaSchedule):
    """Ramp ``kappa`` from ``start`` to ``end`` over ``epochs`` epochs, then hold ``end``.

    A small rate first lets the dynamics learn where to go before they must get there
    fast (Section 3.2, "Choosing kappa": a large kappa makes learning harder).

    Arguments:
        start, end: rates, ``> 0``.
        epochs: length of the ramp, ``>= 1``.
        shape: ``"linear"`` or ``"geometric"`` interpolation.
    """

    start: float
    end: float
    epochs: int
    shape: str = "geometric"

    def __post_init__(self) -> None:
        check_positive("start", self.start)
        check_positive("end", self.end)
        check_positive_int("epochs", self.epochs)
        check_choice("shape", self.shape, ("linear", "geometric"))

    def __call__(self, epoch: int) -> float:
        check_epoch(epoch)
        fraction = min(max(epoch - 1, 0) / self.epochs, 1.0)
        if self.shape == "linear":
            return self.start + fraction * (self.end - self.start)
        return self.start * (self.end / self.start) ** fraction

    @property
    def final(self) -> float:
        return self.end


def constant_kappa(value: float) -> ConstantKappa:
    """A :class:`ConstantKappa` (Eq. 10 with a fixed rate)."""
    return ConstantKappa(value=value)
