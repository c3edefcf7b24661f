"""The base an adapter implements to present a Neural ODE as a :class:`~lyapunov_plugin.LyapunovModel`.

A backend (torchdyn, torchdiffeq, torchode, plain PyTorch) differs only in how it builds
``eta(0)`` from ``x``, how it evaluates ``f`` and how it integrates (paper Eq. 1-3).
:class:`NeuralODEAdapter` owns everything else, once:

- ``encode(x)``: ``x`` checked (a non-empty, finite tensor) and cast to the model's
  floating dtype (numpy's float64 features into a float32 model), ``eta(0)`` checked;
- ``vector_field(eta, context, t)``: ``t`` expanded to one time per state, the batch of
  ``t`` and ``context`` checked against ``eta`` *before* the user's dynamics run, the
  returned ``d eta/dt`` checked against ``eta``;
- ``solution`` / ``trajectory`` from the backend's solve, ``readout``, ``check`` and
  ``forward`` (``psi(eta(t_end))``, an ordinary classifier).

A backend implements three hooks and names its readout::

    class MyAdapter(NeuralODEAdapter):
        field_name = "my library's vector field"           # used in error messages

        def _encode(self, x):  return context, eta0         # phi, Eq. (1)
        def _field(self, eta, context, t):  return f        # Eq. (2); t has shape (B,)
        def _solve(self, context, eta0, ts):  return Solution(...)  # the library's own solver

        readout_module = psi                                 # Eq. (3), an nn.Module

The checks an adapter writer needs are re-exported here (``check_tensor``, ``check_positive``,
...), so adapters import no private module; docs/architecture_adapters.md walks through
the torchode adapter as an example.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, cast

import torch
from torch import Tensor, nn

from ._typing import Context, Output, State, Times, Trajectory
from ._validation import (
    as_model_dtype,
    check_batch,
    check_choice,
    check_finite,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_real,
    check_tensor,
    check_time_grid,
    floating_dtype_of,
    time_dtype,
)

if TYPE_CHECKING:
    from .model import LyapunovModel

__all__ = [
    "NeuralODEAdapter",
    "Solution",
    "check_batch",
    "check_choice",
    "check_finite",
    "check_initial_state",
    "check_model",
    "check_non_negative",
    "check_positive",
    "check_positive_int",
    "check_real",
    "check_shape_sequence",
    "check_tensor",
    "check_time_grid",
    "check_velocity",
    "expand_to_batch",
    "model_dtype",
    "readout_at",
]


@dataclass(frozen=True)
class Solution:
    """A solve of Eq. (1)-(2): states at the requested times and solver statistics.

    Attributes:
        states: ``(T, B, *S)``, the states at ``ts``.
        ts: the ``(T,)`` times.
        nfe: vector-field evaluations the solve used (all stages, all steps).
        nfe_per_example: ``(B,)`` evaluations per example, for solvers that step each
            example on its own (torchode's ``stats["n_f_evals"]``); ``None`` otherwise.
        steps_per_example: ``(B,)`` solver steps each example took until it reached the
            end of the time span (torchode's ``stats["n_steps"]``); ``None`` otherwise.
    """

    states: Tensor
    ts: Tensor
    nfe: int
    nfe_per_example: Optional[Tensor] = None
    steps_per_example: Optional[Tensor] = None


def check_velocity(velocity: Any, eta: Tensor, *, source: str = "the vector field") -> Tensor:
    """Raise a precise error unless ``velocity`` (``d eta/dt`` of Eq. 2) is a tensor shaped,
    typed and placed like ``eta``."""
    if not isinstance(velocity, Tensor):
        raise TypeError(f"{source} must return a torch.Tensor d eta/dt, got {type(velocity).__name__}")
    if velocity.shape != eta.shape:
        raise ValueError(
            f"{source} returned shape {tuple(velocity.shape)} for states of shape {tuple(eta.shape)}; "
            "d eta/dt must have exactly the shape of eta"
        )
    if velocity.dtype != eta.dtype or velocity.device != eta.device:
        raise TypeError(
            f"{source} returned dtype={velocity.dtype}, device={velocity.device} for states with "
            f"dtype={eta.dtype}, device={eta.device}; they must match"
        )
    return velocity


def check_initial_state(eta0: Any, x: Tensor) -> Tensor:
    """``eta(0) = phi(x)`` (Eq. 1) must be a floating-point tensor with one row per example:
    an integer state (integer ``x`` through an identity input layer) cannot be integrated."""
    if not isinstance(eta0, Tensor):
        raise TypeError(f"the input layer must return a tensor eta(0), got {type(eta0).__name__}")
    if not eta0.is_floating_point():
        raise TypeError(
            f"eta(0) must be floating point, got dtype {eta0.dtype} from x of dtype {x.dtype}; pass "
            "floating-point x (e.g. x.float(), or x.float() / 255 for uint8 images) or an input layer that "
            "returns one (e.g. nn.Embedding)"
        )
    if eta0.ndim == 0 or eta0.shape[0] != x.shape[0]:
        raise ValueError(f"eta(0) must have one row per example of x ({x.shape[0]}), got shape {tuple(eta0.shape)}")
    return eta0


def check_shape_sequence(name: str, value: Any) -> tuple[int, ...]:
    """A state or input shape (Eq. 1): a non-empty sequence of positive ints, e.g. ``(2,)`` or
    ``(64, 7, 7)``; a bare int gets a message suggesting the tuple."""
    if isinstance(value, (bool, str)) or not isinstance(value, (tuple, list, torch.Size)):
        hint = f" (did you mean ({value},)?)" if isinstance(value, int) and not isinstance(value, bool) else ""
        raise TypeError(f"{name} must be a non-empty sequence of positive ints{hint}, got {type(value).__name__}")
    shape = tuple(value)
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {value!r}")
    return shape


@contextmanager
def _explained(x: Tensor) -> Iterator[None]:
    """A layer that cannot take ``x`` (a feature count the first layer does not expect, say)
    raises torch's ``RuntimeError`` about the library's two-example probe; say whose input it
    was instead."""
    try:
        yield
    except RuntimeError as err:
        raise ValueError(
            f"the model cannot run on inputs x of shape {tuple(x.shape)} (checked on its first 2 examples; "
            f"does the first layer expect {tuple(x.shape[1:])}?): {err}"
        ) from err


def probe_output(model: LyapunovModel, x: Tensor) -> Any:
    """The readout of ``eta(0)`` for the first two examples of ``x`` (shape and dtype probe;
    call it in eval mode without gradients)."""
    with _explained(x):
        _, eta0 = model.encode(x[:2])
        return model.readout(eta0)


def check_model(model: LyapunovModel, x: Tensor, *, source: str = "the vector field") -> None:
    """Run ``model`` once on two examples of ``x`` (encode, ``f`` at ``t = 0``, readout) and
    raise a precise ``ValueError``/``TypeError`` if the shapes disagree (paper Eq. 1-3)."""
    with _explained(x):
        context, eta0 = model.encode(x[:2])
        t = torch.zeros(eta0.shape[0], dtype=eta0.dtype, device=eta0.device)
        velocity = model.vector_field(eta0, context, t)
    check_velocity(velocity, eta0, source=source)
    with _explained(x):
        out = model.readout(eta0)
    if not isinstance(out, Tensor) or out.shape[0] != eta0.shape[0]:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the readout must map states {tuple(eta0.shape)} to one output per example, got {got}")


def readout_at(model: LyapunovModel, x: Tensor, t_end: float) -> Tensor:
    """``psi(eta(t_end))`` with the model's own solver (Eq. 3): a model's ``forward``."""
    ts = torch.tensor([0.0, t_end], dtype=time_dtype(x), device=x.device)
    return model.readout(model.trajectory(x, ts)[-1])


def expand_to_batch(t: Tensor, batch: int, like: Tensor) -> Tensor:
    """A scalar (or ``(B,)``) time of Eq. (2) as a ``(B,)`` tensor with ``like``'s dtype and device."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.expand(batch) if t.ndim == 0 else t


def model_dtype(module: nn.Module) -> Optional[torch.dtype]:
    """The floating dtype of ``module``'s first floating parameter (``None`` if it has none):
    the dtype the input ``x`` of Eq. (1) is cast to."""
    return cast(Optional[torch.dtype], floating_dtype_of(module))


class NeuralODEAdapter(nn.Module):
    """A Neural ODE ``eta(0) = phi(x)``, ``d eta/dt = f(eta, x, t)``, ``y_hat = psi(eta(t_end))``
    (paper Eq. 1-3) implementing :class:`~lyapunov_plugin.LyapunovModel` from three hooks.

    Subclasses call ``super().__init__(t_end=..., conditioned_on_input=...)`` and implement
    ``_encode``, ``_field`` and ``_solve``; the readout is ``readout_module`` (an
    ``nn.Module``). See the module docstring for what the base checks.

    Arguments:
        t_end: the inference horizon (1 in the paper).
        conditioned_on_input: whether ``f`` sees the input (data-controlled dynamics);
            ``False`` makes the trainer default to trajectory-based training.
    """

    #: How the vector field is named in error messages.
    field_name: str = "the vector field"
    #: ``psi`` of Eq. (3), usually an ``nn.Module`` (``nn.Identity`` for a state read as the output).
    readout_module: Callable[[State], Output]

    def __init__(self, *, t_end: float = 1.0, conditioned_on_input: bool = True) -> None:
        super().__init__()
        if not isinstance(conditioned_on_input, bool):
            raise TypeError(f"conditioned_on_input must be a bool, got {type(conditioned_on_input).__name__}")
        self.conditioned_on_input = conditioned_on_input
        self.t_end = check_positive("t_end", t_end)

    # -- hooks a backend implements -------------------------------------------------------

    def _encode(self, x: Tensor) -> tuple[Context, State]:
        """``(context, eta(0))`` from a checked, cast ``x`` (Eq. 1)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _encode(x) -> (context, eta0)")

    def _field(self, eta: State, context: Context, t: Times) -> State:
        """``f(eta, context, t)`` (Eq. 2) with ``t`` of shape ``(B,)``, batches already checked."""
        raise NotImplementedError(f"{type(self).__name__} must implement _field(eta, context, t)")

    def _solve(self, context: Context, eta0: State, ts: Tensor) -> Solution:
        """The backend's own solve of Eq. (2) from ``eta0`` at the checked times ``ts``."""
        raise NotImplementedError(f"{type(self).__name__} must implement _solve(context, eta0, ts) -> Solution")

    # -- the protocol ---------------------------------------------------------------------

    def _prepare_input(self, x: Any) -> Tensor:
        """``x`` checked (a finite tensor with a batch dimension) and, if floating, cast to the
        model's floating dtype."""
        check_tensor("x", x, min_ndim=1)
        check_finite("x", x)
        return as_model_dtype(x, floating_dtype_of(self))

    def _encode_prepared(self, x: Tensor) -> tuple[Context, State]:
        context, eta0 = self._encode(x)
        return context, check_initial_state(eta0, x)

    def encode(self, x: Tensor) -> tuple[Context, State]:
        """``(context, eta(0))`` of Eq. (1), run once per example."""
        return self._encode_prepared(self._prepare_input(x))

    def vector_field(self, eta: State, context: Context, t: Times) -> State:
        """``d eta/dt = f(eta, x, t)`` (Eq. 2) at any states; ``t`` is a scalar or ``(B,)``."""
        check_tensor("eta", eta, min_ndim=1, floating=True)
        batch = eta.shape[0]
        t = expand_to_batch(t, batch, eta)
        if t.ndim != 1 or t.shape[0] != batch:
            raise ValueError(
                f"t must be a scalar or have shape ({batch},), one time per state of eta, got shape {tuple(t.shape)}"
            )
        if isinstance(context, Tensor) and (context.ndim == 0 or context.shape[0] != batch):
            raise ValueError(f"context must have one row per state of eta ({batch}), got shape {tuple(context.shape)}")
        return check_velocity(self._field(eta, context, t), eta, source=self.field_name)

    def readout(self, eta: State) -> Output:
        """``psi(eta)`` of Eq. (3)."""
        return self.readout_module(eta)

    def solution(self, x: Tensor, ts: Tensor) -> Solution:
        """The backend's solve of Eq. (2) from ``eta(0) = phi(x)`` at ``ts``, with its statistics."""
        check_time_grid("ts", ts)
        context, eta0 = self.encode(x)
        return self._solve(context, eta0, ts)

    def trajectory(self, x: Tensor, ts: Tensor) -> Trajectory:
        """States ``(T, B, *S)`` of Eq. (2) at ``ts`` with the model's own solver."""
        return self.solution(x, ts).states

    def check(self, x: Tensor) -> None:
        """Run the model once on two examples of ``x``; raise a precise error on mismatch (Eq. 1-3)."""
        check_model(self, x, source=self.field_name)

    def forward(self, x: Tensor) -> Output:
        """``psi(eta(t_end))`` (Eq. 3) with the model's own solver: an ordinary classifier."""
        x = self._prepare_input(x)
        ts = torch.tensor([0.0, self.t_end], dtype=time_dtype(x), device=x.device)
        context, eta0 = self._encode_prepared(x)
        return self.readout(self._solve(context, eta0, ts).states[-1])
