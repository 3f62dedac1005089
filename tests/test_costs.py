"""Continuity and jerk cost on hand-built action sequences."""

from __future__ import annotations

import numpy as np
import pytest

from study.costs import continuity_cost, jerk_cost, switch_rate

LOW, HIGH = np.array([-2.0, 0.0]), np.array([2.0, 1.0])


def test_constant_actions_cost_nothing() -> None:
    actions = np.tile([0.7, 0.3], (50, 1))
    assert continuity_cost(actions, LOW, HIGH) == 0.0
    assert jerk_cost(actions, LOW, HIGH) == 0.0


def test_jumping_between_the_bounds_every_step_costs_100() -> None:
    actions = np.array([LOW if t % 2 == 0 else HIGH for t in range(51)])
    assert continuity_cost(actions, LOW, HIGH) == pytest.approx(100.0)
    assert jerk_cost(actions, LOW, HIGH) == pytest.approx(100.0)


def test_hand_computed_values() -> None:
    low, high = np.array([-1.0]), np.array([1.0])
    actions = np.array([[0.0], [0.5], [0.5], [-0.5]])
    # first differences / range: 0.25, 0, -0.5 → mean of squares = (0.0625 + 0 + 0.25) / 3
    assert continuity_cost(actions, low, high) == pytest.approx(100 * 0.3125 / 3)
    # second differences / range: (0.5 - 1.0 + 0)/2 = -0.25, (-0.5 - 1.0 + 0.5)/2 = -0.5
    assert jerk_cost(actions, low, high) == pytest.approx(25 * (0.0625 + 0.25) / 2)


def test_a_linear_ramp_has_no_jerk() -> None:
    actions = np.linspace(-1, 1, 20)[:, None]
    assert jerk_cost(actions, np.array([-1.0]), np.array([1.0])) == pytest.approx(0.0, abs=1e-12)
    assert continuity_cost(actions, np.array([-1.0]), np.array([1.0])) > 0


def test_too_short_episodes_are_undefined() -> None:
    assert np.isnan(continuity_cost(np.zeros((1, 2)), LOW, HIGH))
    assert np.isnan(jerk_cost(np.zeros((2, 2)), LOW, HIGH))


def test_switch_rate() -> None:
    assert switch_rate(np.array([0, 0, 1, 1, 0])) == pytest.approx(0.5)
    assert switch_rate(np.array([2, 2, 2])) == 0.0
