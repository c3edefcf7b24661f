"""Optional building blocks for LyaNet models (paper Eq. 1-3), plain PyTorch.

- :class:`MLPDynamics`: a data-controlled vector field ``f(eta, x, t) = MLP([eta, c, t])``.
- :class:`SimplexDynamics`: dynamics that always point into the class simplex, in the
  spirit of the reference implementation's class-simplex-directed field; they make the
  Lyapunov condition of Eq. (10) easy to satisfy and keep states bounded.
- :class:`LipschitzMLP`: an MLP whose linear layers are spectrally normalised, so that
  :func:`~lyapunov_plugin.spectral_lipschitz_bound` gives a small, exact bound and
  Theorem 3 a non-trivial certified radius.
- :class:`Standardize`: fixed input normalisation inside the model, so attacks see pixels.

They are conveniences; any module with the same call signature works.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrizations

from ._validation import check_positive, check_positive_int

__all__ = ["MLPDynamics", "SimplexDynamics", "LipschitzMLP", "Standardize", "simplex_corners"]


def _activation(name: str) -> nn.Module:
    table = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "softplus": nn.Softplus, "elu": nn.ELU}
    if name not in table:
        raise ValueError(f"activation must be one of {sorted(table)}, got {name!r}")
    return table[name]()


def _mlp(sizes: Sequence[int], activation: str, *, spectral: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        linear = nn.Linear(a, b)
        layers.append(parametrizations.spectral_norm(linear) if spectral else linear)
        if i < len(sizes) - 2:
            layers.append(_activation(activation))
    return nn.Sequential(*layers)


class MLPDynamics(nn.Module):
    """Data-controlled dynamics ``f(eta, x, t) = MLP([eta, context, t])`` (paper Eq. 2).

    Arguments:
        state_dim, context_dim: sizes of ``eta`` and of the context.
        hidden: hidden widths.
        time_dependent: append ``t`` to the input.
        activation: ``"tanh"``, ``"relu"``, ``"gelu"``, ``"softplus"`` or ``"elu"``.
    """

    def __init__(
        self,
        state_dim: int,
        context_dim: int,
        hidden: Sequence[int] = (64, 64),
        *,
        time_dependent: bool = True,
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        state_dim = check_positive_int("state_dim", state_dim)
        context_dim = check_positive_int("context_dim", context_dim)
        self.state_dim, self.context_dim = state_dim, context_dim
        self.time_dependent = bool(time_dependent)
        self.net = _mlp([state_dim + context_dim + int(self.time_dependent), *hidden, state_dim], activation)

    def forward(self, eta: Tensor, context: Tensor, t: Tensor) -> Tensor:
        parts = [eta, context]
        if self.time_dependent:
            parts.append(t.reshape(-1, 1).to(eta.dtype).expand(eta.shape[0], 1))
        return self.net(torch.cat(parts, dim=1))

    def context_lipschitz_bound(self) -> float:
        """An l2 bound on the Lipschitz constant of ``f`` in the context (Theorem 3's
        ``L_f`` before the encoder): the spectral norm of the first layer's context
        columns times the rest of the network's bound."""
        from .diagnostics import spectral_lipschitz_bound

        first = cast(nn.Linear, self.net[0])  # _mlp without spectral norm starts with a plain nn.Linear
        context_cols = first.weight[:, self.state_dim : self.state_dim + self.context_dim]
        with torch.no_grad():
            head = float(torch.linalg.matrix_norm(context_cols.detach().double(), ord=2))
        return head * spectral_lipschitz_bound(self.net[1:])


def simplex_corners(
    num_classes: int,
    half_width: float,
    *,
    dtype: Optional[torch.dtype] = None,
    device: Optional[Union[str, torch.device]] = None,
) -> Tensor:
    """The ``m`` class corners of ``[-s, s]^m``: ``+s`` on the class, ``-s`` elsewhere
    (the corners of Appendix B, Eq. 49). Row ``j`` is class ``j``'s corner."""
    eye = torch.eye(num_classes, dtype=dtype, device=device)
    return half_width * (2.0 * eye - 1.0)


class SimplexDynamics(nn.Module):
    """Dynamics that flow towards a context-chosen mixture of class corners.

    ``f(eta, x, t) = gain * (sum_j w_j c_j - eta)`` with ``w = softmax(MLP([eta, context, t]))``
    and ``c_j`` the corners of :func:`simplex_corners`. Every target lies in the
    hypercube ``[-s, s]^m``, so states starting inside stay inside (the Appendix-B region
    is forward invariant) and, under the identity readout with cross entropy, ``dV/dt <= 0``
    whenever the weights pick the correct class. The network only has to decide *where*
    to go; *how fast* is fixed by ``gain``, which should exceed ``kappa``.

    Arguments:
        num_classes: ``m`` (the state is ``m``-dimensional, identity readout).
        context_dim: size of the context.
        half_width: ``s`` of the corners, e.g. ``appendix_b_half_width(kappa, m)``.
        gain: contraction rate towards the target, ``> 0``.
        hidden: hidden widths of the weighting network.
        time_dependent, activation: as in :class:`MLPDynamics`.
    """

    def __init__(
        self,
        num_classes: int,
        context_dim: int,
        *,
        half_width: float,
        gain: float,
        hidden: Sequence[int] = (64,),
        time_dependent: bool = False,
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        num_classes = check_positive_int("num_classes", num_classes)
        self.half_width = check_positive("half_width", half_width)
        self.gain = check_positive("gain", gain)
        self.weights = MLPDynamics(
            num_classes, context_dim, hidden, time_dependent=time_dependent, activation=activation
        )
        self.register_buffer("corners", simplex_corners(num_classes, self.half_width))

    def forward(self, eta: Tensor, context: Tensor, t: Tensor) -> Tensor:
        w = self.weights(eta, context, t).softmax(dim=-1)
        return self.gain * (w @ self.corners.to(eta.dtype) - eta)


class LipschitzMLP(nn.Module):
    """An MLP with spectrally normalised linear layers and 1-Lipschitz activations,
    scaled by ``lipschitz``: an l2 Lipschitz bound of ``lipschitz`` by construction
    (up to power-iteration accuracy; :func:`~lyapunov_plugin.spectral_lipschitz_bound`
    computes the exact bound), the ``L_f`` that Theorem 3 needs.

    Arguments:
        sizes: layer widths, input first.
        lipschitz: overall scale, ``> 0``.
        activation: a 1-Lipschitz activation name (``"relu"``, ``"tanh"``, ``"softplus"``, ``"elu"``).
    """

    def __init__(self, sizes: Sequence[int], *, lipschitz: float = 1.0, activation: str = "relu") -> None:
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"sizes must list at least input and output widths, got {list(sizes)}")
        if activation == "gelu":
            raise ValueError("activation must be 1-Lipschitz for LipschitzMLP; 'gelu' is not (1.13)")
        self.lipschitz = check_positive("lipschitz", lipschitz)
        self.net = _mlp(list(sizes), activation, spectral=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.lipschitz * self.net(x.flatten(1))

    def lipschitz_bound(self) -> float:
        """Exact l2 bound: ``lipschitz`` times the product of the layers' spectral norms."""
        from .diagnostics import spectral_lipschitz_bound

        return self.lipschitz * spectral_lipschitz_bound(self.net)


class Standardize(nn.Module):
    """``(x - mean) / std`` with fixed statistics, the first layer of an encoder, so that
    inputs (and attacks) live in pixel space. Lipschitz constant ``1 / min(std)``."""

    # Registered as buffers in __init__.
    mean: Tensor
    std: Tensor

    def __init__(self, mean: Tensor, std: Tensor, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone().clamp_min(eps))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    @classmethod
    def fit(cls, x: Tensor, *, per_feature: bool = False, eps: float = 1e-6) -> Standardize:
        """Statistics from training data: global (default) or per feature."""
        if per_feature:
            return cls(x.mean(0, keepdim=True), x.std(0, keepdim=True), eps=eps)
        return cls(x.mean().reshape(1), x.std().reshape(1), eps=eps)

    def lipschitz_bound(self) -> float:
        return float(1.0 / self.std.min())
