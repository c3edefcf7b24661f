"""Shape vocabulary used in signatures and docstrings across the package.

The aliases are plain ``torch.Tensor`` at run time; the names document the shapes:

- ``B``: examples in a batch, ``G``: Monte Carlo samples per example (Gamma in Alg. 1),
  ``T``: time points of a trajectory, ``S``: the state shape (``(k,)`` for a vector state,
  ``(C, H, W)`` for a feature map), ``m``: readout dimension (classes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from torch import Tensor

#: Hidden states ``eta`` of shape ``(B, *S)`` (paper Eq. 1-3).
State = Tensor
#: Per-example conditioning of the dynamics, ``(B, ...)``: what ``f(eta, x, t)`` sees of ``x``.
Context = Optional[Tensor]
#: Times of shape ``(B,)``, one per state.
Times = Tensor
#: States along a trajectory, ``(T, B, *S)``.
Trajectory = Tensor
#: Readout output ``psi(eta)``, ``(B, m)``.
Output = Tensor
#: One non-negative value per example, ``(B,)``.
PerSample = Tensor
#: A solver: ``solver(func, y0, ts) -> (T, *y0.shape)`` with ``func(t, y)``, the signature of
#: ``torchdiffeq.odeint``.
Solver = Callable[[Callable[[Tensor, Tensor], Tensor], Tensor, Tensor], Tensor]
