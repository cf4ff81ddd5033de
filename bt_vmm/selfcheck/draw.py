"""Where the generator's choices come from: a seeded PRNG (the `selfcheck`
command) or hypothesis (the test suite, which then shrinks failing cases).

Every choice is made so that its simplest value is the first one: integers
shrink towards their lower bound, choices towards the first element and
booleans towards False, so a shrunk case reads like the simplest program that
still diverges.
"""

from __future__ import annotations

import random
from typing import Sequence, TypeVar

T = TypeVar("T")


class Draw:
    def int(self, lo: int, hi: int) -> int:          # inclusive bounds
        raise NotImplementedError

    def choice(self, seq: Sequence[T]) -> T:
        return seq[self.int(0, len(seq) - 1)]

    def bool(self, p: float = 0.5) -> bool:
        return self.int(0, 999) >= int(1000 * (1 - p))

    def u32(self) -> int:
        return self.int(0, 0xFFFFFFFF)


class RandomDraw(Draw):
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, seq: Sequence[T]) -> T:
        return self.rng.choice(seq)

    def bool(self, p: float = 0.5) -> bool:
        return self.rng.random() < p


class HypothesisDraw(Draw):
    """Draws through a hypothesis `data` object (from `st.data()`)."""

    def __init__(self, data) -> None:
        from hypothesis import strategies as st
        self._data = data
        self._st = st
        self._cache: dict[tuple[int, int], object] = {}

    def int(self, lo: int, hi: int) -> int:
        strat = self._cache.get((lo, hi))
        if strat is None:
            strat = self._cache[(lo, hi)] = self._st.integers(lo, hi)
        return self._data.draw(strat)
