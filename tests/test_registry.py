"""The adapter registry, the adapter base and the import graph (paper Eq. 1-3 models)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import lyapunov_plugin
from lyapunov_plugin import FixedStepSolver, LyapunovTrainer, NeuralODEAdapter, ODEModel, Solution, as_lyapunov_model
from lyapunov_plugin.registry import register_adapter, registered_adapters, unregister_adapter

CORE = Path(lyapunov_plugin.__file__).resolve().parent


class _Linear(NeuralODEAdapter):
    """A minimal adapter: d eta/dt = -A eta + context, Euler steps, linear readout."""

    field_name = "the linear field"

    def __init__(self, steps: int = 4):
        super().__init__(t_end=1.0)
        self.a = nn.Parameter(torch.eye(2))
        self.readout_module = nn.Linear(2, 2)
        self.steps = steps

    def _encode(self, x):
        return x, torch.zeros_like(x)

    def _field(self, eta, context, t):
        return -eta @ self.a.T + context

    def _solve(self, context, eta0, ts):
        states, eta, nfe = [eta0], eta0, 0
        for t0, t1 in zip(ts[:-1], ts[1:], strict=True):
            h = (t1 - t0) / self.steps
            for _ in range(self.steps):
                eta, nfe = eta + h * self._field(eta, context, t0), nfe + 1
            states.append(eta)
        return Solution(states=torch.stack(states), ts=ts, nfe=nfe)


def test_an_adapter_from_the_base_is_a_lyapunov_model_with_the_shared_checks():
    model = _Linear()
    x = torch.randn(3, 2)
    context, eta0 = model.encode(x)
    torch.testing.assert_close(model.vector_field(eta0, context, 0.0), x)  # scalar t is expanded
    # Euler on d eta/dt = -eta + x from 0, 4 steps of 1/4: eta(1) = (1 - 0.75^4) x.
    torch.testing.assert_close(model.trajectory(x, torch.tensor([0.0, 1.0]))[-1], (1 - 0.75**4) * x)
    torch.testing.assert_close(model(x.double()), model.readout_module((1 - 0.75**4) * x))
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor, got list"):
        model([[1.0, 2.0]])
    with pytest.raises(ValueError, match="ts must be strictly increasing"):
        model.trajectory(x, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(3,\)"):
        model.vector_field(eta0, context, torch.zeros(2))
    assert LyapunovTrainer(model, progress=False).model is model


def test_ode_model_boundary_checks_run_before_the_users_dynamics():
    calls = []

    def dynamics(eta, context, t):
        calls.append(1)
        return -eta + context

    model = ODEModel(dynamics, state_shape=(2,), solver=FixedStepSolver(method="rk4", steps=2))
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        model([[0.0, 1.0]])
    eta = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(4,\).*got shape \(5,\)"):
        model.vector_field(eta, torch.randn(4, 2), torch.rand(5))
    with pytest.raises(ValueError, match=r"context must have one row per state of eta \(4\), got shape \(3, 2\)"):
        model.vector_field(eta, torch.randn(3, 2), torch.rand(4))
    assert calls == []
    with pytest.raises(TypeError, match=r"state_shape must be a non-empty sequence of positive ints \(did you mean"):
        ODEModel(dynamics, state_shape=2)


def test_ode_model_casts_float64_inputs_to_a_float32_model():
    torch.manual_seed(0)
    lin = nn.Linear(4, 2)
    model = ODEModel(
        lambda eta, x, t: torch.tanh(lin(torch.cat([eta, x], -1))), state_shape=(2,), encoder=nn.Identity()
    )
    model.lin = lin
    x = torch.randn(3, 2)
    out = model(x.double())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model(x))


class _Toy(nn.Module):
    def forward(self, t, y):  # looks like a torchdiffeq field too: the user's adapter must win
        return -y


def test_a_registered_adapter_is_consulted_before_the_builtins_and_can_be_removed():
    register_adapter("toy", matches=lambda m: isinstance(m, _Toy), wrap=lambda m: _Linear(), description="a _Toy")
    try:
        assert isinstance(as_lyapunov_model(_Toy()), _Linear)
        assert [e.name for e in registered_adapters()][0] == "toy"
        with pytest.raises(ValueError, match="an adapter named 'toy' is already registered"):
            register_adapter("toy", matches=bool, wrap=lambda m: m)
    finally:
        unregister_adapter("toy")
    assert type(as_lyapunov_model(_Toy())).__name__ == "TorchdiffeqModel"
    with pytest.raises(ValueError, match="no adapter named 'toy'"):
        unregister_adapter("toy")


def test_an_adapter_whose_library_is_not_imported_is_not_asked():
    asked = []
    register_adapter(
        "absent", matches=lambda m: asked.append(m) or True, wrap=lambda m: _Linear(), requires="no_such_lib_xyz"
    )
    try:
        with pytest.raises(TypeError, match="not supported"):
            as_lyapunov_model(object())
        assert asked == []
    finally:
        unregister_adapter("absent")


def test_register_adapter_checks_its_arguments():
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        register_adapter("", matches=bool, wrap=bool)
    with pytest.raises(TypeError, match="matches must be callable"):
        register_adapter("x", matches=3, wrap=bool)
    with pytest.raises(TypeError, match="requires must be a module name"):
        register_adapter("x", matches=bool, wrap=bool, requires=3)


def test_the_unsupported_model_error_lists_the_registered_adapters():
    with pytest.raises(TypeError) as err:
        as_lyapunov_model(object())
    message = str(err.value)
    for name in ("torchdyn", "torchdiffeq-block", "torchode", "torchdiffeq", "LyapunovModel protocol"):
        assert f"- {name}" in message or name in message
    assert "register_adapter" in message


def test_modules_import_in_a_fresh_interpreter_and_the_registrations_import_no_ode_library():
    # One interpreter (starting one costs seconds): model first, which must not need dispatch;
    # the import-graph test below covers the order-independence of the rest.
    code = (
        "import sys\n"
        "import lyapunov_plugin.model, lyapunov_plugin.adapter, lyapunov_plugin.registry\n"
        "import lyapunov_plugin.dispatch, lyapunov_plugin.classifier, lyapunov_plugin.adapters\n"
        "try:\n    lyapunov_plugin.as_lyapunov_model(object())\nexcept TypeError:\n    pass\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {'torchdyn', 'torchdiffeq', 'torchode'})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _module_level_imports(path: Path) -> set[str]:
    """``lyapunov_plugin`` modules imported at import time (not inside functions or TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else []:
            if isinstance(sub, ast.ImportFrom) and sub.level == 1 and sub.module:
                found.add(sub.module.split(".")[0])
    return found


def test_the_core_import_graph_has_no_cycle():
    graph = {p.stem: _module_level_imports(p) for p in CORE.glob("*.py") if p.stem != "__init__"}
    assert "dispatch" not in graph["model"] and "dispatch" not in graph["adapter"]
    state: dict[str, str] = {}

    def visit(module, path):
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            assert state.get(dep) != "open", f"import cycle: {' -> '.join([*path, dep])}"
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
