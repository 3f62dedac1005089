"""The stacked engine: E members trained as one equal E SB3 models trained one by one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.utils import polyak_update
from torch import nn

from study.buffers import PrioritizedReplayBuffer
from study.dqn import DQN, QRDQN
from study.policies import ParamNoiseDQNPolicy, ParamNoiseQRDQNPolicy, ParamNoiseSACPolicy, ParamNoiseTD3Policy
from study.stacked.buffer import StackedReplayBuffer
from study.stacked.common import StackedBatch, polyak
from study.stacked.dqn import StackedDQN, StackedQRDQN
from study.stacked.nets import StackedLinear, Unsupported, stack_sequential
from study.stacked.optim import StackedAdam
from study.stacked.sac import StackedSAC
from study.stacked.td3 import StackedTD3

E, BATCH, STEPS = 3, 16, 6
RTOL, ATOL = 1e-5, 1e-6


def test_a_stacked_network_computes_each_members_network_on_its_slice() -> None:
    th.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 2), nn.Tanh()) for _ in range(E)]
    for net in nets:  # LayerNorm's affine parameters start at 1 and 0: make them differ between members
        nn.init.normal_(net[1].weight), nn.init.normal_(net[1].bias)
    x = th.randn(E, 5, 3)
    expected = th.stack([net(x[i]) for i, net in enumerate(nets)])
    stacked = stack_sequential(nets)
    th.testing.assert_close(stacked(x), expected, rtol=RTOL, atol=ATOL)
    with th.no_grad():  # the members' parameters are views of the stacked ones
        stacked[0].weight[1].add_(1.0)
    assert th.equal(nets[1][0].weight, stacked[0].weight[1]) and not th.equal(nets[0][0].weight, nets[1][0].weight)
    assert isinstance(stacked[0], StackedLinear)


def test_networks_with_other_layers_are_refused() -> None:
    with pytest.raises(Unsupported, match="Dropout"):
        stack_sequential([nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)) for _ in range(2)])
    with pytest.raises(Unsupported, match="depth"):
        stack_sequential([nn.Sequential(nn.Linear(2, 2)), nn.Sequential(nn.Linear(2, 2), nn.ReLU())])


def model(algo: type[OffPolicyAlgorithm], seed: int, layer_norm: bool, **kwargs: Any) -> OffPolicyAlgorithm:
    env = gym.make("Pendulum-v1")
    policy_kwargs = {"net_arch": [32, 32], "layer_norm": layer_norm, **kwargs.pop("policy_kwargs", {})}
    kwargs.setdefault("device", "cpu")  # the members' CPU streams, also where a GPU is
    built = algo(
        ParamNoiseSACPolicy if algo is SAC else ParamNoiseTD3Policy,
        env,
        seed=seed,
        learning_rate=lambda progress: 1e-3 * progress,  # a schedule: each train call sets the rate
        batch_size=BATCH,
        buffer_size=500,
        learning_starts=0,
        policy_kwargs=policy_kwargs,
        **kwargs,
    )
    built.set_logger(Logger(folder=None, output_formats=[]))
    rng = np.random.default_rng(seed)
    for _ in range(200):
        obs, next_obs = rng.normal(size=(2, 1, 3)).astype(np.float32)
        done, truncated = rng.random() < 0.1, rng.random() < 0.5
        built.replay_buffer.add(
            obs, next_obs, rng.uniform(-1, 1, (1, 1)), rng.normal(size=1), np.array([done]),
            [{"TimeLimit.truncated": done and truncated}],
        )  # fmt: skip
    return built


def replay(batches: list) -> Callable[..., object]:
    """A replay buffer's `sample` that hands out these batches in turn."""
    given = iter(batches)
    return lambda batch_size, env=None: next(given)


def train_side_by_side(
    reference: list, stacked: Any, streams: list | None = None, steps: list[int] | None = None
) -> None:
    """Two `train()` calls of each reference model and of the stacked members, on the same batches
    (and, with `streams`, each member's torch stream); the learning rate follows the schedule.
    With `steps`, member i takes steps[i] gradient steps per call (masked in the stacked update)."""
    steps = steps or [STEPS] * len(reference)
    for call, progress in enumerate((1.0, 0.5)):
        drawn = []
        for i, ref in enumerate(reference):
            np.random.seed(10 * i + call)
            buffer = ref.replay_buffer
            drawn.append([type(buffer).sample(buffer, BATCH) for _ in range(steps[i])])
            drawn[i] += drawn[i][-1:] * (max(steps) - steps[i])  # placeholders where the member does not step
            buffer.sample = replay(drawn[i])
            ref._current_progress_remaining = progress
            if streams is not None:
                th.set_rng_state(streams[i])
            ref.train(gradient_steps=steps[i], batch_size=BATCH)
            if streams is not None:
                streams[i] = th.get_rng_state()
        fields = StackedBatch._fields[:5]
        batches = [
            StackedBatch(*(th.stack([getattr(d[step], f) for d in drawn]) for f in fields))
            for step in range(max(steps))
        ]
        if len(set(steps)) > 1:
            batches = [batch._replace(mask=th.tensor(steps) > step) for step, batch in enumerate(batches)]
        stacked.train(batches, progress)


CASES = {
    "td3": (TD3, StackedTD3, False, {}),
    "td3-layernorm": (TD3, StackedTD3, True, {}),
    "ddpg": (DDPG, StackedTD3, False, {}),
    "sac-auto-entropy": (SAC, StackedSAC, False, {"target_update_interval": 2}),
    "sac-layernorm": (SAC, StackedSAC, True, {}),
    "sac-fixed-entropy": (SAC, StackedSAC, False, {"ent_coef": 0.1}),
    "sac-gsde": (SAC, StackedSAC, False, {"use_sde": True}),
    "sac-gsde-layernorm-expln": (
        SAC,
        StackedSAC,
        True,
        {"use_sde": True, "policy_kwargs": {"use_expln": True, "clip_mean": 0.0}},
    ),
}
#: gradient steps per call of each member where members take different numbers (episodic rollouts)
UNEVEN = [STEPS, STEPS - 2, STEPS - 3]


@pytest.mark.parametrize("uneven", [False, True], ids=["lockstep", "uneven"])
@pytest.mark.parametrize("case", CASES)
def test_the_stacked_update_is_each_members_sb3_update(case: str, uneven: bool) -> None:
    algo, engine, layer_norm, kwargs = CASES[case]
    seeds = [3, 11, 42][:E]
    reference = [model(algo, seed, layer_norm, **kwargs) for seed in seeds]
    members = [model(algo, seed, layer_norm, **kwargs) for seed in seeds]
    for ref, member in zip(reference, members, strict=True):  # same seed, same initial networks
        assert all(th.equal(a, b) for a, b in zip(ref.policy.parameters(), member.policy.parameters(), strict=True))
    streams = [th.Generator().manual_seed(100 + i).get_state() for i in range(E)]  # each member's torch RNG
    stacked = engine(members, [th.Generator().manual_seed(100 + i) for i in range(E)])
    steps = UNEVEN if uneven else [STEPS] * E
    train_side_by_side(reference, stacked, streams, steps)

    assert stacked.actor_optimizer.param_groups[0]["lr"] == reference[0].actor.optimizer.param_groups[0]["lr"] == 5e-4
    optimizers = [stacked.actor_optimizer, stacked.critic_optimizer, getattr(stacked, "ent_coef_optimizer", None)]
    for i, (ref, member) in enumerate(zip(reference, members, strict=True)):
        assert member._n_updates == ref._n_updates == 2 * steps[i]
        named = zip(ref.policy.named_parameters(), member.policy.named_parameters(), strict=True)
        for (name, expected), (_, got) in named:
            th.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL, msg=name)
        stacked_params = {
            param.data[i].data_ptr(): (optimizer, param)
            for optimizer in filter(None, optimizers)
            for group in optimizer.param_groups
            for param in group["params"]
        }
        learned = [(ref.actor, member.actor), (ref.critic, member.critic)]
        pairs = [
            (net.optimizer, p, q)
            for net, other in learned
            for p, q in zip(net.parameters(), other.parameters(), strict=True)
        ]
        if getattr(ref, "ent_coef_optimizer", None) is not None:
            th.testing.assert_close(member.log_ent_coef, ref.log_ent_coef, rtol=RTOL, atol=ATOL)
            pairs.append((ref.ent_coef_optimizer, ref.log_ent_coef, member.log_ent_coef))
        for ref_optimizer, ref_param, member_param in pairs:
            optimizer, stacked_param = stacked_params[member_param.data_ptr()]
            state, expected_state = optimizer.state[stacked_param], ref_optimizer.state[ref_param]
            assert int(state["step"].expand(E)[i]) == int(expected_state["step"])
            for key in ("exp_avg", "exp_avg_sq"):
                expected = expected_state[key]
                scale = ATOL * float(expected.abs().max())  # float tolerance relative to the tensor's scale
                th.testing.assert_close(state[key][i].reshape(expected.shape), expected, rtol=RTOL, atol=scale)


def q_model(algo: type[DQN | QRDQN], seed: int, layer_norm: bool, **kwargs: Any) -> DQN | QRDQN:
    policy = ParamNoiseQRDQNPolicy if algo is QRDQN else ParamNoiseDQNPolicy
    extra = {"n_quantiles": 5} if algo is QRDQN else {}
    built = algo(
        policy, gym.make("CartPole-v1"), seed=seed, learning_rate=lambda progress: 1e-3 * progress,
        batch_size=BATCH, buffer_size=500, learning_starts=0,
        policy_kwargs={"net_arch": [32, 32], "layer_norm": layer_norm, **extra}, **kwargs,
    )  # fmt: skip
    built.set_logger(Logger(folder=None, output_formats=[]))
    rng = np.random.default_rng(seed)
    for _ in range(200):
        obs, next_obs = rng.normal(size=(2, 1, 4)).astype(np.float32)
        done = rng.random() < 0.1
        built.replay_buffer.add(
            obs, next_obs, rng.integers(0, 2, (1, 1)), rng.normal(size=1), np.array([done]), [{}]
        )  # fmt: skip
    return built


Q_CASES = {
    "dqn, gradient norm clipped": (DQN, StackedDQN, False, {"max_grad_norm": 0.05}),
    "dqn-layernorm": (DQN, StackedDQN, True, {}),
    "qrdqn, gradient norm clipped": (QRDQN, StackedQRDQN, False, {"max_grad_norm": 0.05}),
}


@pytest.mark.parametrize("uneven", [False, True], ids=["lockstep", "uneven"])
@pytest.mark.parametrize("case", Q_CASES)
def test_the_stacked_q_update_is_each_members_update(case: str, uneven: bool) -> None:
    algo, engine, layer_norm, kwargs = Q_CASES[case]
    seeds = [3, 11, 42][:E]
    reference = [q_model(algo, seed, layer_norm, **kwargs) for seed in seeds]
    members = [q_model(algo, seed, layer_norm, **kwargs) for seed in seeds]
    stacked = engine(members, [th.Generator() for _ in seeds])
    steps = UNEVEN if uneven else [STEPS] * E
    train_side_by_side(reference, stacked, steps=steps)

    assert stacked.optimizer.param_groups[0]["lr"] == reference[0].policy.optimizer.param_groups[0]["lr"] == 5e-4
    net = stacked.net_name
    stacked_params = {param.data[i].data_ptr(): (param, i) for param in stacked.net.parameters() for i in range(E)}
    for ref, member, taken in zip(reference, members, steps, strict=True):
        assert member._n_updates == ref._n_updates == 2 * taken
        pairs = zip(getattr(ref, net).parameters(), getattr(member, net).parameters(), strict=True)
        for expected, got in pairs:
            th.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)
            param, i = stacked_params[got.data_ptr()]
            state, expected_state = stacked.optimizer.state[param], ref.policy.optimizer.state[expected]
            assert int(state["step"].expand(E)[i]) == int(expected_state["step"]) == 2 * taken
            for key in ("exp_avg", "exp_avg_sq"):
                scale = ATOL * float(expected_state[key].abs().max())
                th.testing.assert_close(state[key][i], expected_state[key], rtol=RTOL, atol=scale)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_stacked_adam_steps_each_member_as_its_own_adam_and_leaves_masked_members_alone(weight_decay: float) -> None:
    th.manual_seed(0)
    initial = [th.randn(E, 4, 3), th.randn(E, 4)]
    reference = [[nn.Parameter(p[i].clone()) for p in initial] for i in range(E)]
    optimizers = [th.optim.Adam(params, lr=1e-2, weight_decay=weight_decay) for params in reference]
    stacked = [nn.Parameter(p.clone()) for p in initial]
    optimizer = StackedAdam(stacked, E, lr=1e-2, weight_decay=weight_decay)
    masks = [None, None, th.tensor([True, False, True]), None, th.tensor([False, True, True])]
    for call, mask in enumerate(masks):
        grads = [th.randn_like(p) for p in initial]
        for i in range(E):
            if mask is None or mask[i]:
                for param, grad in zip(reference[i], grads, strict=True):
                    param.grad = grad[i].clone()
                optimizers[i].step()
        for param, grad in zip(stacked, grads, strict=True):
            param.grad = grad.clone()
        optimizer.step(mask=mask)
        for i in range(E):
            for param, expected in zip(stacked, reference[i], strict=True):
                if call < 2:  # in step: torch's own arithmetic, bit for bit
                    assert th.equal(param[i], expected)
                th.testing.assert_close(param[i], expected, rtol=1e-6, atol=1e-7)
    assert optimizer.state[stacked[0]]["step"].tolist() == [4, 4, 5]


@pytest.mark.parametrize("mask", [None, th.tensor([True, False, True])])
def test_stacked_target_update_is_sb3_polyak_update_of_each_member(mask: th.Tensor | None) -> None:
    th.manual_seed(0)
    params, targets = [th.randn(E, 4, 3), th.randn(E, 4)], [th.randn(E, 4, 3), th.randn(E, 4)]
    expected = [t.clone() for t in targets]
    for i in range(E):
        if mask is None or mask[i]:
            polyak_update([p[i] for p in params], [t[i] for t in expected], 0.005)
    polyak(params, targets, 0.005, mask)
    for got, want in zip(targets, expected, strict=True):
        assert th.equal(got, want)


@pytest.mark.parametrize("kind", [ReplayBuffer, PrioritizedReplayBuffer])
def test_the_device_copy_of_the_stacked_replay_gives_the_batches_of_the_host_arrays(kind: type) -> None:
    """A GPU's copy of the members' buffers (here on the CPU) follows every write, wrap-around
    and checkpoint restore, and gives the same batches as the host arrays, bit for bit."""
    obs_space, act_space = gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-1, 1, (2,))
    host, device = (
        StackedReplayBuffer([kind(8, obs_space, act_space, device="cpu") for _ in range(E)], on_device=on_device)
        for on_device in (False, True)
    )
    assert host.copy is None and device.copy is not None
    data = np.random.RandomState(0)
    for _ in range(13):  # past the end: members that stepped more wrap around first
        obs, next_obs = data.randn(E, 3).astype(np.float32), data.randn(E, 3).astype(np.float32)
        step = (obs, next_obs, data.randn(E, 1, 2).astype(np.float32), data.randn(E), data.rand(E) < 0.2)
        step += (data.rand(E) < 0.1, data.rand(E) < 0.8)
        for buffer in (host, device):
            buffer.add(*step)
    assert (host.pos == device.pos).all() and host.full.any()

    def same_batches() -> None:
        for mask in (None, np.array([True, False, True])):
            a, b = (
                buffer.sample(BATCH, [np.random.RandomState(i) for i in range(E)], mask) for buffer in (host, device)
            )
            for name in ("observations", "actions", "next_observations", "dones", "rewards", "weights", "mask"):
                first, second = getattr(a, name), getattr(b, name)
                assert (first is None) == (second is None)
                if first is not None:
                    assert th.equal(first, second), name
            if kind is PrioritizedReplayBuffer:
                np.testing.assert_array_equal(a.indices, b.indices)

    same_batches()
    for buffer in (host, device):  # a checkpoint's transitions, written into a member's buffer in place
        buffer.buffers[1].observations[...] = 7.0
        buffer.buffers[1].pos = 3
        buffer.refresh()
    same_batches()
    assert (device.copy["observations"][1] == 7.0).all()


@pytest.mark.skipif(not th.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_the_graphed_sac_step_on_a_gpu_is_the_eager_step() -> None:
    """Replays of the captured gradient step leave the networks, the optimizers' state and the
    members' random streams as the eager steps do (draws between the calls included), and a
    step of members out of lockstep goes back to eager steps for good."""
    learners, streams = [], []
    for _ in range(2):
        generators = [th.Generator(device="cuda").manual_seed(i) for i in range(E)]
        learners.append(StackedSAC([model(SAC, i, True, device="cuda") for i in range(E)], generators))
        streams.append(generators)
    graphed, eager = learners
    assert graphed.graphed is not None
    eager.graphed = None
    data = th.Generator(device="cuda").manual_seed(99)

    def batch(mask: th.Tensor | None = None) -> StackedBatch:
        shapes = ((E, BATCH, 3), (E, BATCH, 1), (E, BATCH, 3), (E, BATCH, 1), (E, BATCH, 1))
        fields = [th.randn(shape, device="cuda", generator=data) for shape in shapes]
        fields[3] = (fields[3] > 1).float()
        return StackedBatch(*fields, mask=mask)

    calls = [[batch() for _ in range(4)] for _ in range(3)] + [[batch(), batch(th.tensor([True, False, True]))]]
    for progress, batches in zip((1.0, 0.8, 0.6, 0.4), calls, strict=True):
        for learner, generators in zip(learners, streams, strict=True):
            learner.train(batches, progress)
            for generator in generators:  # acting between updates draws from the same streams
                th.randn(5, device="cuda", generator=generator)
        nets = (graphed.critics, graphed.latent_pi, graphed.mu), (eager.critics, eager.latent_pi, eager.mu)
        for one, other in zip(*nets, strict=True):  # the same kernels on the same tensors: bit for bit
            assert all(th.equal(a, b) for a, b in zip(one.parameters(), other.parameters(), strict=True))
        assert th.equal(graphed.log_ent_coef, eager.log_ent_coef)
        for a, b in zip(*streams, strict=True):
            assert a.get_offset() == b.get_offset()
        assert th.equal(graphed.n_updates, eager.n_updates)
    assert graphed.graphed is None  # the masked step released the graph
    for a, b in zip(graphed.actor_optimizer.state.values(), eager.actor_optimizer.state.values(), strict=True):
        assert th.equal(a["step"], b["step"])


def test_only_steps_of_all_members_at_one_count_and_rate_go_to_the_graph() -> None:
    """Where a graph would hold the step (on a GPU), a batch of all members goes to it; members
    at different Adam step counts (resumed from different steps) or out of lockstep take eager
    steps and release it."""

    class Graph:
        def __init__(self) -> None:
            self.calls, self.released = 0, False

        def __call__(self, batch: StackedBatch) -> None:
            self.calls += 1

        def release(self) -> None:
            self.released = True

    def learner() -> StackedSAC:
        models = [model(SAC, i, False) for i in range(E)]
        for member in models:
            member._custom_logger = False  # no losses to read back
        return StackedSAC(models, [th.Generator().manual_seed(i) for i in range(E)])

    def batch(mask: th.Tensor | None = None) -> StackedBatch:
        shapes = ((E, BATCH, 3), (E, BATCH, 1), (E, BATCH, 3), (E, BATCH, 1), (E, BATCH, 1))
        return StackedBatch(*(th.zeros(shape) for shape in shapes), mask=mask)

    lockstep = learner()
    graph = lockstep.graphed = Graph()
    lockstep.train([batch(), batch()], 1.0)
    assert graph.calls == 2 and not graph.released and lockstep.n_updates.tolist() == [2] * E
    lockstep.train([batch(th.tensor([True, False, True]))], 0.5)
    assert graph.calls == 2 and graph.released and lockstep.graphed is None

    apart = learner()
    apart.train([batch(th.tensor([True, False, True]))], 1.0)  # the step counts now differ
    graph = apart.graphed = Graph()
    apart.train([batch()], 0.5)
    assert graph.calls == 0 and graph.released and apart.n_updates.tolist() == [2, 1, 2]
