"""The adapters the dispatcher consults, as torchode keeps its step methods (``register_method``).

``LyapunovTrainer(model)`` presents ``model`` as a :class:`~lyapunov_plugin.LyapunovModel`
(paper Eq. 1-3) through the first registered adapter that claims it. A new backend is one
file that calls :func:`register_adapter`; nothing in the core names it::

    register_adapter(
        "mylib",
        matches=lambda model: isinstance(model, mylib.ODENet),  # cheap, no solve
        wrap=MyLibModel,                                          # model -> LyapunovModel
        requires="mylib",                                         # only asked once mylib is imported
        description="a mylib ODENet",
    )

``requires`` keeps the core free of ODE libraries: a model of a library can only exist once
the user imported that library, so its adapter is not asked (and its module not imported)
before ``requires`` is in ``sys.modules``. The builtin adapters (torchdyn, torchdiffeq,
torchode) register in ``lyapunov_plugin.adapters``, which is imported on the first lookup,
as ``fallback`` entries: an adapter a user registers is asked first.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from .model import LyapunovModel

__all__ = ["AdapterEntry", "register_adapter", "unregister_adapter", "registered_adapters", "find_adapter"]

#: The package whose import registers the builtin adapters.
BUILTIN_PACKAGE = "lyapunov_plugin.adapters"


@dataclass(frozen=True)
class AdapterEntry:
    """One registered adapter: how to recognise a model and how to present it as a
    :class:`~lyapunov_plugin.LyapunovModel` (Eq. 1-3).

    Attributes:
        name: the adapter's name (unique), shown in the unsupported-model error.
        matches: ``matches(model) -> bool``; cheap (it must not solve anything).
        wrap: ``wrap(model) -> LyapunovModel``.
        requires: a module name; the adapter is asked only once it is in ``sys.modules``.
        description: one line for the unsupported-model error.
        fallback: asked after every non-fallback adapter (the builtin ones are fallbacks).
    """

    name: str
    matches: Callable[[Any], bool]
    wrap: Callable[[Any], LyapunovModel]
    requires: Optional[str] = None
    description: str = ""
    fallback: bool = False

    def applies(self) -> bool:
        """Whether the adapter can be asked now (its ``requires`` module is imported)."""
        return self.requires is None or self.requires in sys.modules


_ADAPTERS: dict[str, AdapterEntry] = {}


def register_adapter(
    name: str,
    *,
    matches: Callable[[Any], bool],
    wrap: Callable[[Any], LyapunovModel],
    requires: Optional[str] = None,
    description: str = "",
    fallback: bool = False,
    replace: bool = False,
) -> AdapterEntry:
    """Register an adapter that presents some models as a :class:`~lyapunov_plugin.LyapunovModel`
    (Eq. 1-3) to ``LyapunovTrainer``, the objectives and ``Classifier``.

    Arguments:
        name: a unique, non-empty name.
        matches: ``matches(model) -> bool``, called on models that are not already a
            ``LyapunovModel``; an error it raises reaches the user (use that for a model
            that is recognisably yours but malformed).
        wrap: ``wrap(model) -> LyapunovModel`` for a model ``matches`` accepted.
        requires: a module name (e.g. ``"torchode"``); the adapter is skipped until the user
            has imported it, so ``matches`` may import the library freely.
        description: one line describing the models it accepts (shown in the
            unsupported-model error).
        fallback: ask this adapter only after all non-fallback ones (the builtins use it).
        replace: replace an adapter already registered under ``name`` instead of raising.

    Returns:
        The registered :class:`AdapterEntry`.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {type(name).__name__} {name!r}")
    for arg, value in (("matches", matches), ("wrap", wrap)):
        if not callable(value):
            raise TypeError(f"{arg} must be callable, got {type(value).__name__}")
    if requires is not None and (not isinstance(requires, str) or not requires):
        raise TypeError(f"requires must be a module name (a non-empty str) or None, got {requires!r}")
    if not isinstance(description, str):
        raise TypeError(f"description must be a str, got {type(description).__name__}")
    for arg, flag in (("fallback", fallback), ("replace", replace)):
        if not isinstance(flag, bool):
            raise TypeError(f"{arg} must be a bool, got {type(flag).__name__} {flag!r}")
    if name in _ADAPTERS and not replace:
        raise ValueError(f"an adapter named {name!r} is already registered; pass replace=True to replace it")
    entry = AdapterEntry(name, matches, wrap, requires, description, fallback)
    _ADAPTERS[name] = entry
    return entry


def unregister_adapter(name: str) -> AdapterEntry:
    """Remove the adapter registered under ``name`` and return it (Eq. 1-3 adapters)."""
    if name not in _ADAPTERS:
        raise ValueError(f"no adapter named {name!r} is registered; registered: {sorted(_ADAPTERS)}")
    return _ADAPTERS.pop(name)


def _load_builtins() -> None:
    if BUILTIN_PACKAGE not in sys.modules:
        importlib.import_module(BUILTIN_PACKAGE)


def registered_adapters() -> tuple[AdapterEntry, ...]:
    """The registered adapters in the order the dispatcher asks them (Eq. 1-3): non-fallback
    ones in registration order, then the fallbacks (the builtins)."""
    _load_builtins()
    entries = list(_ADAPTERS.values())
    return tuple(e for e in entries if not e.fallback) + tuple(e for e in entries if e.fallback)


def find_adapter(model: Any) -> Optional[AdapterEntry]:
    """The first adapter that applies now and whose ``matches`` accepts ``model``
    (``None`` if there is none): how ``model`` becomes a ``LyapunovModel`` (Eq. 1-3)."""
    for entry in registered_adapters():
        if entry.applies() and entry.matches(model):
            return entry
    return None
