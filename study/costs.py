"""Smoothness costs of one episode's action sequence (DESIGN.md §5)."""

from __future__ import annotations

import numpy as np


def _normalized(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    actions = np.asarray(actions, dtype=np.float64)
    return actions.reshape(len(actions), -1) / (np.asarray(high, np.float64) - np.asarray(low, np.float64)).ravel()


def continuity_cost(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """100 · mean over steps and dims of ((a_{t+1} − a_t) / (high − low))², in [0, 100]."""
    if len(actions) < 2:
        return float("nan")
    a = _normalized(actions, low, high)
    return float(100.0 * np.mean(np.diff(a, axis=0) ** 2))


def jerk_cost(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """The same with the second difference a_{t+1} − 2a_t + a_{t−1}, scaled by 100/4."""
    if len(actions) < 3:
        return float("nan")
    a = _normalized(actions, low, high)
    return float(25.0 * np.mean((a[2:] - 2.0 * a[1:-1] + a[:-2]) ** 2))


def switch_rate(actions: np.ndarray) -> float:
    """Fraction of steps whose discrete action differs from the previous one."""
    actions = np.asarray(actions)
    if len(actions) < 2:
        return float("nan")
    return float(np.mean(actions[1:] != actions[:-1]))
