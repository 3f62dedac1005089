"""Distances between the outputs of the unperturbed and the perturbed network."""

from __future__ import annotations

import math

import torch as th
from torch.nn import functional as F


def rms_action_distance(actions: th.Tensor, perturbed_actions: th.Tensor) -> float:
    """sqrt(mean((π(s) − π̃(s))²)) in the normalized [-1, 1] action space."""
    return float(th.sqrt(th.mean((actions - perturbed_actions) ** 2)))


def softmax_kl_distance(q_values: th.Tensor, perturbed_q_values: th.Tensor) -> float:
    """mean_s KL(softmax Q(s) ‖ softmax Q̃(s)) over a batch of states (rows)."""
    log_p = F.log_softmax(q_values.double(), dim=-1)
    log_q = F.log_softmax(perturbed_q_values.double(), dim=-1)
    return float((log_p.exp() * (log_p - log_q)).sum(dim=-1).mean())


def epsilon_to_kl(epsilon: float, n_actions: int) -> float:
    """δ = −log(1 − ε + ε/|A|): the KL distance between a greedy policy and its ε-greedy version."""
    return -math.log(1.0 - epsilon + epsilon / n_actions)
