"""Feature extractors the studies can name."""

from __future__ import annotations

import gymnasium as gym
import torch as th
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor, NatureCNN
from torch import nn


class MinAtarCNN(BaseFeaturesExtractor):
    """The MinAtar network's trunk (Young & Tian, 2019): one 3×3 convolution with 16
    channels, stride 1, then a fully connected layer of `features_dim` units.

    Takes channel-last (H, W, C) observations, as MinAtar gives them.
    """

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 128) -> None:
        super().__init__(observation_space, features_dim)
        height, width, channels = observation_space.shape
        self.conv = nn.Sequential(nn.Conv2d(channels, 16, kernel_size=3, stride=1), nn.ReLU(), nn.Flatten())
        self.linear = nn.Sequential(nn.Linear(16 * (height - 2) * (width - 2), features_dim), nn.ReLU())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.linear(self.conv(observations.float().permute(0, 3, 1, 2)))


FEATURES: dict[str, type[BaseFeaturesExtractor]] = {
    "flatten": FlattenExtractor,
    "nature_cnn": NatureCNN,
    "minatar_cnn": MinAtarCNN,
}
