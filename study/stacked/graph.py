"""A stacked learner's lockstep gradient step, captured once as a CUDA graph and replayed.

On a GPU one stacked gradient step is hundreds of small kernels whose launches cost more than
their arithmetic. Replaying them as one graph removes the launches and leaves the arithmetic:
the same kernels on the same tensors. The members' generators are registered with the graph,
so each replay draws from each member's stream where it stands, as the eager step would; the
optimizers read their bias corrections from device tensors that each replay's bookkeeping writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch as th

from study.stacked.common import StackedBatch
from study.stacked.optim import StackedAdam

#: eager steps on a side stream before the capture (torch's lazy initializations, the optimizers' state)
WARMUP = 3


class GraphedStep:
    """`step(batch)` (one gradient step of every member) as a CUDA graph: eager for the first
    WARMUP calls, then captured on the batch's shapes and replayed; batches are copied into the
    captured inputs."""

    def __init__(
        self,
        step: Callable[[StackedBatch], None],
        optimizers: Sequence[StackedAdam],
        generators: Sequence[th.Generator],
    ) -> None:
        self.step, self.optimizers, self.generators = step, list(optimizers), list(generators)
        self.calls = 0
        self.inputs: StackedBatch | None = None
        self.graph: th.cuda.CUDAGraph | None = None

    def __call__(self, batch: StackedBatch) -> None:
        if self.inputs is None:
            self.inputs = batch._replace(**{f: getattr(batch, f).clone() for f in StackedBatch._fields[:5]})
        for field in StackedBatch._fields[:5]:
            getattr(self.inputs, field).copy_(getattr(batch, field))
        self.calls += 1
        if self.calls <= WARMUP:
            side = th.cuda.Stream()
            side.wait_stream(th.cuda.current_stream())
            with th.cuda.stream(side):
                self.step(self.inputs)
            th.cuda.current_stream().wait_stream(side)
            return
        if self.graph is None:
            self._capture()
        for optimizer in self.optimizers:
            optimizer.advance()
        self.graph.replay()

    def _capture(self) -> None:
        graph = th.cuda.CUDAGraph()
        for generator in self.generators:
            graph.register_generator_state(generator)
        for optimizer in self.optimizers:
            optimizer.graphed()
        with th.cuda.graph(graph):
            self.step(self.inputs)
        self.graph = graph

    def release(self) -> None:
        """Back to eager steps for good (members out of lockstep): the optimizers keep counting."""
        for optimizer in self.optimizers:
            optimizer.ungraphed()
        self.graph = None
