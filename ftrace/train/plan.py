"""The step plan of a run: how many steps, which examples each step sees, where checkpoints fall.

- An epoch is ceil(examples / batch_size) steps; the last batch of an epoch may be smaller.
- Total steps = epochs x steps per epoch, capped by `max_steps`.
- Epoch e visits the examples in the order `numpy.random.default_rng((seed, e)).permutation(n)`;
  step s (counted from 0) is batch s mod steps-per-epoch of epoch s // steps-per-epoch. The order
  depends only on (seed, step), so a resumed run sees exactly the batches an uninterrupted one does.
- K checkpoints fall at steps ceil(k x total / K) for k = 1..K (duplicates dropped when total < K),
  so the last is the final step; or, given fractions f (`at`), at steps ceil(f x total) and the final step.
  Step 0 (the base model) is always saved as well. With --save-every N, resume/ is saved at the multiples of N
  that are not checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class Plan:
    examples: int
    batch_size: int
    epochs: int
    max_steps: int | None
    seed: int
    checkpoints: int
    at: tuple[float, ...] = ()  # fractions of the run, instead of `checkpoints` evenly spaced

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.examples / self.batch_size)

    @property
    def total_steps(self) -> int:
        total = self.epochs * self.steps_per_epoch
        return total if self.max_steps is None else min(total, self.max_steps)

    def checkpoint_steps(self) -> list[int]:
        """Steps of the fine-tuned checkpoints, ascending, without step 0."""
        total, k = self.total_steps, self.checkpoints
        if self.at:
            return sorted({max(1, math.ceil(f * total)) for f in self.at} | {total})
        return sorted({math.ceil(i * total / k) for i in range(1, k + 1)})

    def resume_steps(self, every: int) -> list[int]:
        """The steps between checkpoints that save resume/ (`--save-every every`; 0: none), ascending."""
        checkpoints = set(self.checkpoint_steps())
        return [s for s in range(every, self.total_steps, every) if s not in checkpoints] if every else []

    def epoch_of(self, step: int) -> float:
        """Epochs completed after `step` steps (fractional)."""
        return step / self.steps_per_epoch

    def batch(self, step: int) -> list[int]:
        """Example indices of step `step` (0-based: the step that takes the weights from `step` to
        `step + 1`)."""
        epoch, b = divmod(step, self.steps_per_epoch)
        order = _order(self.seed, epoch, self.examples)
        return order[b * self.batch_size:(b + 1) * self.batch_size].tolist()


@lru_cache(maxsize=2)  # consecutive steps share their epoch's order
def _order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng((seed, epoch)).permutation(n)
