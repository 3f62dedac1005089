"""Exploration methods: parameter-space noise and the action-noise baselines."""

from study.exploration.param_noise import ParamNoiseCallback
from study.exploration.perturb import Perturbation, perturbable_parameters

__all__ = ["ParamNoiseCallback", "Perturbation", "perturbable_parameters"]
