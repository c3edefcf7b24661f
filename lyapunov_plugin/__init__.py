"""lyapunov_plugin: LyaNet Lyapunov-loss training for existing Neural ODEs.

Rodriguez, Ames & Yue, "LyaNet: A Lyapunov Framework for Training Neural ODEs",
ICML 2022. The core imports torch only; torchdyn and torchdiffeq models are reached
through ``lyapunov_plugin.adapters``.
"""

from .adapter import NeuralODEAdapter as NeuralODEAdapter
from .anytime import AnytimePrediction as AnytimePrediction
from .anytime import LevelChoice as LevelChoice
from .anytime import anytime_predict as anytime_predict
from .anytime import binomial_upper_bound as binomial_upper_bound
from .anytime import choose_level as choose_level
from .budget import SolverError as SolverError
from .certify import Certificate as Certificate
from .certify import certify as certify
from .classifier import Classifier as Classifier
from .contraction import CertifiedMarginObjective as CertifiedMarginObjective
from .contraction import ContractionObjective as ContractionObjective
from .diagnostics import DecayStatistics as DecayStatistics
from .diagnostics import InferenceCurve as InferenceCurve
from .diagnostics import decay_statistics as decay_statistics
from .diagnostics import empirical_lipschitz as empirical_lipschitz
from .diagnostics import loss_error_curve as loss_error_curve
from .diagnostics import lyapunov_condition_rate as lyapunov_condition_rate
from .diagnostics import nfe_to_end as nfe_to_end
from .diagnostics import spectral_lipschitz_bound as spectral_lipschitz_bound
from .diagnostics import theorem3_radius as theorem3_radius
from .diagnostics import trajectory_violation_rate as trajectory_violation_rate
from .dispatch import as_lyapunov_model as as_lyapunov_model
from .losses import CounterexampleSearch as CounterexampleSearch
from .losses import LyapunovLossOutput as LyapunovLossOutput
from .losses import discrete_path_lyapunov_loss as discrete_path_lyapunov_loss
from .losses import lyapunov_loss as lyapunov_loss
from .losses import monte_carlo_lyapunov_loss as monte_carlo_lyapunov_loss
from .losses import path_lyapunov_loss as path_lyapunov_loss
from .model import LyapunovModel as LyapunovModel
from .model import ODEModel as ODEModel
from .model import Solution as Solution
from .model import integrate as integrate
from .objectives import MonteCarloObjective as MonteCarloObjective
from .objectives import Objective as Objective
from .objectives import PathIntegralObjective as PathIntegralObjective
from .objectives import PenalisedObjective as PenalisedObjective
from .objectives import SupervisedObjective as SupervisedObjective
from .objectives import default_objective as default_objective
from .potentials import CrossEntropyPotential as CrossEntropyPotential
from .potentials import MarginPotential as MarginPotential
from .potentials import MSEPotential as MSEPotential
from .potentials import Potential as Potential
from .recipe import Recipe as Recipe
from .recipe import default_recipe as default_recipe
from .registry import register_adapter as register_adapter
from .registry import registered_adapters as registered_adapters
from .registry import unregister_adapter as unregister_adapter
from .robust import InputPerturbedObjective as InputPerturbedObjective
from .robust import robust_objective as robust_objective
from .samplers import HypercubeSampler as HypercubeSampler
from .samplers import HypersphereSampler as HypersphereSampler
from .samplers import MixtureSampler as MixtureSampler
from .samplers import RolloutSampler as RolloutSampler
from .samplers import SamplingContext as SamplingContext
from .samplers import StateSampler as StateSampler
from .samplers import StratifiedTimeSampler as StratifiedTimeSampler
from .samplers import TimeSampler as TimeSampler
from .samplers import TrajectorySampler as TrajectorySampler
from .samplers import UniformTimeSampler as UniformTimeSampler
from .samplers import appendix_b_half_width as appendix_b_half_width
from .schedules import ConstantKappa as ConstantKappa
from .schedules import KappaSchedule as KappaSchedule
from .schedules import KappaWarmup as KappaWarmup
from .settling import SettlingPenalty as SettlingPenalty
from .solvers import FixedStepSolver as FixedStepSolver
from .trainer import LyapunovTrainer as LyapunovTrainer
from .trainer import NonFiniteLossError as NonFiniteLossError

__version__ = "0.1.0"

__all__ = [
    "AnytimePrediction",
    "Certificate",
    "CertifiedMarginObjective",
    "Classifier",
    "ContractionObjective",
    "ConstantKappa",
    "CounterexampleSearch",
    "CrossEntropyPotential",
    "DecayStatistics",
    "FixedStepSolver",
    "HypercubeSampler",
    "HypersphereSampler",
    "InferenceCurve",
    "InputPerturbedObjective",
    "KappaSchedule",
    "KappaWarmup",
    "LevelChoice",
    "LyapunovLossOutput",
    "LyapunovModel",
    "LyapunovTrainer",
    "MSEPotential",
    "MarginPotential",
    "MixtureSampler",
    "MonteCarloObjective",
    "NeuralODEAdapter",
    "NonFiniteLossError",
    "ODEModel",
    "Objective",
    "PathIntegralObjective",
    "PenalisedObjective",
    "Potential",
    "Recipe",
    "RolloutSampler",
    "SamplingContext",
    "Solution",
    "SettlingPenalty",
    "SolverError",
    "StateSampler",
    "StratifiedTimeSampler",
    "SupervisedObjective",
    "TimeSampler",
    "TrajectorySampler",
    "UniformTimeSampler",
    "anytime_predict",
    "binomial_upper_bound",
    "choose_level",
    "appendix_b_half_width",
    "as_lyapunov_model",
    "certify",
    "decay_statistics",
    "default_objective",
    "default_recipe",
    "discrete_path_lyapunov_loss",
    "empirical_lipschitz",
    "integrate",
    "loss_error_curve",
    "lyapunov_condition_rate",
    "lyapunov_loss",
    "monte_carlo_lyapunov_loss",
    "nfe_to_end",
    "path_lyapunov_loss",
    "register_adapter",
    "registered_adapters",
    "robust_objective",
    "spectral_lipschitz_bound",
    "theorem3_radius",
    "trajectory_violation_rate",
    "unregister_adapter",
]
