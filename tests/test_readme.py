"""Every Python snippet in README.md runs as shipped, each in a fresh interpreter from the project
folder, as a reader pastes it. Snippets that train for longer than a test can take are listed in
CAPPED with the reason: they run unchanged except that every `learn` call trains for at most
CAP_STEPS steps."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CAP_STEPS = 300
CAPPED = {  # section heading → why the snippet cannot run in full here
    "Parameter noise in your own script": "trains TD3 and SAC on HalfCheetah-v5 for 1M steps each",
    "Discrete actions: DQN, NoisyNet, prioritized replay, the chain MDP": "trains two DQNs for 50k steps each",
    "On-policy: PPO and TRPO": "trains PPO on HalfCheetah-v5 for 1M steps",
}
CAP = f"""
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

learn_calls = []


def _capped(learn):
    def capped(self, total_timesteps, *args, **kwargs):
        learn_calls.append(total_timesteps)
        return learn(self, min(total_timesteps, {CAP_STEPS}), *args, **kwargs)

    return capped


OffPolicyAlgorithm.learn = _capped(OffPolicyAlgorithm.learn)
OnPolicyAlgorithm.learn = _capped(OnPolicyAlgorithm.learn)
"""


def readme_snippets() -> list[tuple[str, int, str]]:
    """(section heading, first line, code) of every ```python block in README.md."""
    snippets, heading, fence, start, body = [], "", None, 0, []
    for number, line in enumerate(README.read_text().splitlines(), start=1):
        if fence is None and line.startswith("```"):
            fence, start, body = line[3:].strip(), number + 1, []
        elif fence is not None and line.strip() == "```":
            if fence == "python":
                snippets.append((heading, start, "\n".join(body)))
            fence = None
        elif fence is not None:
            body.append(line)
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
    return snippets


SNIPPETS = readme_snippets()


def test_the_capped_snippets_are_the_ones_that_train() -> None:
    """CAPPED lists exactly the snippets that call `learn`: none runs capped unless it must."""
    assert SNIPPETS, "no ```python block in README.md"
    training = {heading for heading, _, code in SNIPPETS if ".learn(" in code}
    assert training == set(CAPPED)


@pytest.mark.parametrize(
    ("heading", "line", "code"),
    [pytest.param(*s, marks=[pytest.mark.slow] if s[0] in CAPPED else []) for s in SNIPPETS],
    ids=[f"L{line}-" + re.sub(r"\W+", "-", heading)[:24] for heading, line, _ in SNIPPETS],
)
def test_readme_snippet_runs(heading: str, line: int, code: str) -> None:
    source = "\n" * (line - 1) + code  # tracebacks give README.md's line numbers
    program = f"exec(compile({source!r}, {str(README)!r}, 'exec'))"
    if heading in CAPPED:  # CAPPED[heading] says why
        calls = code.count(".learn(")
        program = f"{CAP}\n{program}\nassert len(learn_calls) == {calls}, f'capped {{learn_calls}}, not {calls} calls'"
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"},  # one torch thread: the machine is shared
    )
    assert done.returncode == 0, f"README.md line {line} ({heading}):\n{done.stderr[-3000:]}"
