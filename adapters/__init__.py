"""Adapters that present existing Neural ODE models as a :class:`~lyapunov_plugin.LyapunovModel`.

Installed as ``lyapunov_plugin.adapters``. This package is the only place that imports
torchdyn or torchdiffeq; each submodule imports its library on first use only.
"""
