"""The registry names every algorithm's classes, and the driver side imports no training code."""

from __future__ import annotations

import subprocess
import sys

import pytest
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy

from study.registry import ALGORITHMS, resolve


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_names_classes_that_exist(name: str) -> None:
    algo = ALGORITHMS[name]
    assert issubclass(algo.load(), BaseAlgorithm)
    for policy in filter(None, (algo.policy, algo.noisy_policy)):
        assert issubclass(resolve(policy), BasePolicy)
    assert "learning_rate" in algo.hyperparams() and "policy" not in algo.hyperparams()
    assert algo.default("gamma") == 0.99 and algo.default("not_an_argument") is None


def test_configuration_launch_storage_and_analysis_import_no_training_code() -> None:
    code = (
        "import sys\n"
        "import study.config, study.launch, study.store, study.progress, study.registry, study.analysis.report\n"
        "heavy = sorted(m for m in ('torch', 'stable_baselines3', 'sb3_contrib', 'study.algos', 'study.run')"
        " if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
