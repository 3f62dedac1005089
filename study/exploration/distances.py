"""Distances between the outputs of the unperturbed and the perturbed network."""

from __future__ import annotations

import torch as th


def rms_action_distance(actions: th.Tensor, perturbed_actions: th.Tensor) -> float:
    """sqrt(mean((π(s) − π̃(s))²)) in the normalized [-1, 1] action space."""
    return float(th.sqrt(th.mean((actions - perturbed_actions) ** 2)))
