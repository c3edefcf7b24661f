"""torchdyn ``NeuralODE`` models as a :class:`~lyapunov_plugin.LyapunovModel` (paper Eq. 1-3).

Supported: a ``torchdyn.core.NeuralODE`` alone, or inside an ``nn.Sequential`` with
layers before it (the input layer ``phi``, e.g. ``Augmenter`` or an encoder) and after
it (the readout ``psi``, applied to the final state). Vector fields may use
``DataControl`` (data-controlled dynamics) and ``DepthCat`` (time-dependent dynamics).

Conditioning. torchdyn's ``DataControl`` reads the input through an attribute that
``NeuralODE`` sets before integrating (``module._control = x.detach()``, where ``x`` is
the state handed to the ``NeuralODE``, i.e. ``phi(x)``). To evaluate ``f`` at sampled
states with the right example's data, :meth:`TorchdynModel.vector_field` sets that
attribute for the duration of the call and restores it afterwards; the conditioning
travels as the ``context`` argument. One deliberate difference: torchdyn detaches the
control, but here the context keeps its gradient. In Monte Carlo training (Algorithm 1)
no trajectory starts from ``phi(x)``, so the context is the only path by which the
input layer can learn. Trajectories (:meth:`TorchdynModel.trajectory`) use torchdyn's
own integration, solver, tolerances and sensitivity (autograd or adjoint) unchanged.

Without ``DataControl`` the vector field does not see the input: ``eta(0) = phi(x)``
alone carries the example and one ``f`` must serve every label. Sampling states from a
fixed region is then ill-posed (the same state would have to flow towards different
labels), so :attr:`TorchdynModel.conditioned_on_input` is ``False`` and
``LyapunovTrainer`` defaults to trajectory-based training.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional, cast

from torch import Tensor, nn

from lyapunov_plugin.adapter import NeuralODEAdapter, Solution, check_positive_int
from lyapunov_plugin.budget import DEFAULT_MAX_EVALUATIONS, EvaluationBudget

from ._time import PerSampleTime, select_rows

try:
    from torchdyn.core import NeuralODE
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "lyapunov_plugin.adapters.torchdyn needs torchdyn: pip install 'lyapunov-plugin[torchdyn]'"
    ) from err

__all__ = ["TorchdynModel", "find_neural_ode", "is_torchdyn_model"]


def find_neural_ode(model: nn.Module) -> Optional[int]:
    """Index of the single ``NeuralODE`` in an ``nn.Sequential`` (``-1`` for a bare one).

    Returns ``None`` if ``model`` is neither; raises ``ValueError`` for several.
    """
    if isinstance(model, NeuralODE):
        return -1
    if isinstance(model, nn.Sequential):
        found = [i for i, layer in enumerate(model) if isinstance(layer, NeuralODE)]
        if len(found) > 1:
            raise ValueError(
                f"model is an nn.Sequential with {len(found)} NeuralODE layers (at positions {found}); "
                "LyapunovTrainer supports exactly one NeuralODE per model"
            )
        return found[0] if found else None
    return None


def is_torchdyn_model(model: object) -> bool:
    """True for a ``NeuralODE`` or an ``nn.Sequential`` holding one."""
    return isinstance(model, nn.Module) and find_neural_ode(model) is not None


class TorchdynModel(NeuralODEAdapter):
    """Protocol view of an existing torchdyn model (see the module docstring).

    Arguments:
        model: a ``NeuralODE``, or an ``nn.Sequential`` with exactly one ``NeuralODE``.
        t_end: inference horizon (1 in the paper).
        max_evaluations: vector-field evaluations one solve may use; a solve that needs
            more, or whose field returns NaN/Inf, raises
            :class:`~lyapunov_plugin.budget.SolverError` instead of running forever
            (torchdyn's adaptive loop has no limit of its own).
    """

    field_name = "the torchdyn vector field"

    def __init__(self, model: nn.Module, *, t_end: float = 1.0, max_evaluations: int = DEFAULT_MAX_EVALUATIONS) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torchdyn NeuralODE or nn.Sequential, got {type(model).__name__}")
        index = find_neural_ode(model)
        if index is None:
            raise TypeError(
                f"model must be a torchdyn NeuralODE or an nn.Sequential containing one, got {type(model).__name__}"
            )
        node = model if index == -1 else cast(nn.Sequential, model)[index]
        if node.order != 1:
            raise ValueError(f"only first-order NeuralODEs are supported, got order={node.order}")
        if node.integral_loss is not None:
            raise ValueError("NeuralODEs with an integral_loss are not supported (the state is augmented by torchdyn)")
        controls = [m for m in node.vf.modules() if hasattr(m, "_control")]
        super().__init__(t_end=t_end, conditioned_on_input=bool(controls))
        self.model: nn.Module = model
        self._index: int = index
        self._controls: list[Any] = controls  # DataControl modules (their `_control` is untyped)
        self.max_evaluations: int = check_positive_int("max_evaluations", max_evaluations)
        self._time: PerSampleTime = PerSampleTime(self.field_name)

    @property
    def _sequential(self) -> nn.Sequential:
        """The wrapped model as the ``nn.Sequential`` it is whenever ``_index != -1`` (find_neural_ode)."""
        return cast(nn.Sequential, self.model)

    @property
    def node(self) -> NeuralODE:
        """The wrapped ``NeuralODE``."""
        return self.model if self._index == -1 else self._sequential[self._index]

    @property
    def initial_state_trainable(self) -> bool:
        """Whether the layers before the ``NeuralODE`` (the input layer) have trainable parameters."""
        if self._index <= 0:
            return False
        return any(p.requires_grad for p in self._sequential[: self._index].parameters())

    @property
    def fixed_steps(self) -> Optional[int]:
        """1 for torchdyn's fixed-step solvers (euler, midpoint, rk4: they step from one
        ``t_span`` point to the next, so inference over ``[0, t_end]`` is a single step);
        ``None`` for adaptive ones."""
        return 1 if getattr(self.node.solver, "stepping_class", None) == "fixed" else None

    @property
    def _has_readout(self) -> bool:
        return not (self._index == -1 or self._index == len(self._sequential) - 1)

    @property
    def readout_module(self) -> nn.Module:  # type: ignore[override]
        """``psi``: the layers after the ``NeuralODE`` (``nn.Identity`` if there are none)."""
        return self._sequential[self._index + 1 :] if self._has_readout else nn.Identity()

    def readout(self, eta: Tensor) -> Tensor:
        return self._sequential[self._index + 1 :](eta) if self._has_readout else eta

    def _encode(self, x: Tensor) -> tuple[Optional[Tensor], Tensor]:
        eta0 = x if self._index <= 0 else self._sequential[: self._index](x)
        return (eta0 if self.conditioned_on_input else None), eta0

    @contextmanager
    def _conditioned(self, context: Optional[Tensor]) -> Iterator[None]:
        saved = [m._control for m in self._controls]
        for m in self._controls:
            m._control = context
        try:
            yield
        finally:
            for m, value in zip(self._controls, saved, strict=True):
                m._control = value

    def _field(self, eta: Tensor, context: Optional[Tensor], t: Tensor) -> Tensor:
        if self.conditioned_on_input and not isinstance(context, Tensor):
            raise ValueError(
                f"context must be a tensor with one row per state ({eta.shape[0]}) for a DataControl "
                f"vector field, got {context!r}"
            )

        def field(tt: Tensor, rows: Optional[Tensor]) -> Tensor:
            with self._conditioned(select_rows(context, rows)):
                return self.node.vf(tt, select_rows(eta, rows))

        return self._time(field, eta, t)

    def _solve(self, context: Optional[Tensor], eta0: Tensor, ts: Tensor) -> Solution:
        """torchdyn's solve of ``eta(0) = phi(x)`` at ``ts``, with the evaluations it used."""
        node = self.node
        before = node.vf.nfe
        budget = EvaluationBudget(self.max_evaluations, source=self.field_name)
        # Every solver evaluation goes through node.vf (torchdyn's DEFunc): count it there.
        hook = node.vf.register_forward_hook(lambda module, args, out: budget(args[0], args[1], out))
        try:
            result = node(eta0, t_span=ts.to(device=eta0.device, dtype=eta0.dtype))
        finally:
            hook.remove()
        states = result[1] if isinstance(result, tuple) else result
        return Solution(states=states, ts=ts, nfe=int(node.vf.nfe - before))
