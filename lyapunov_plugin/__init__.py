"""lyapunov_plugin: LyaNet Lyapunov-loss training for existing Neural ODEs.

Rodriguez, Ames & Yue, "LyaNet: A Lyapunov Framework for Training Neural ODEs",
ICML 2022. The core imports torch only; torchdyn and torchdiffeq models are reached
through ``lyapunov_plugin.adapters``.
"""

from .losses import LyapunovLossOutput as LyapunovLossOutput
from .losses import discrete_path_lyapunov_loss as discrete_path_lyapunov_loss
from .losses import lyapunov_loss as lyapunov_loss
from .losses import monte_carlo_lyapunov_loss as monte_carlo_lyapunov_loss
from .losses import path_lyapunov_loss as path_lyapunov_loss
from .model import LyapunovModel as LyapunovModel
from .model import ODEModel as ODEModel
from .model import integrate as integrate
from .potentials import CrossEntropyPotential as CrossEntropyPotential
from .potentials import MarginPotential as MarginPotential
from .potentials import MSEPotential as MSEPotential
from .potentials import Potential as Potential
from .samplers import HypercubeSampler as HypercubeSampler
from .samplers import HypersphereSampler as HypersphereSampler
from .samplers import MixtureSampler as MixtureSampler
from .samplers import SamplingContext as SamplingContext
from .samplers import StateSampler as StateSampler
from .samplers import StratifiedTimeSampler as StratifiedTimeSampler
from .samplers import TimeSampler as TimeSampler
from .samplers import TrajectorySampler as TrajectorySampler
from .samplers import UniformTimeSampler as UniformTimeSampler
from .samplers import appendix_b_half_width as appendix_b_half_width
from .solvers import FixedStepSolver as FixedStepSolver

__version__ = "0.1.0"

__all__ = [
    "CrossEntropyPotential",
    "FixedStepSolver",
    "HypercubeSampler",
    "HypersphereSampler",
    "LyapunovLossOutput",
    "LyapunovModel",
    "MSEPotential",
    "MarginPotential",
    "MixtureSampler",
    "ODEModel",
    "Potential",
    "SamplingContext",
    "StateSampler",
    "StratifiedTimeSampler",
    "TimeSampler",
    "TrajectorySampler",
    "UniformTimeSampler",
    "appendix_b_half_width",
    "discrete_path_lyapunov_loss",
    "integrate",
    "lyapunov_loss",
    "monte_carlo_lyapunov_loss",
    "path_lyapunov_loss",
]
