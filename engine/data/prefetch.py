"""Prepare the next training batch while the current one trains.

:func:`prefetched` yields ``make(0), make(1), ...`` in order; with ``ahead=True`` one background thread runs
``make(i + 1)`` while the caller works on item ``i``. The calls still run one at a time and in order, so a
generator they draw from (the augmentation's) advances exactly as in the plain loop: the batches are the same,
bit for bit, and once the iteration is over no call is pending (an epoch-end checkpoint sees the same RNG state).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, TypeVar

__all__ = ["prefetched"]

T = TypeVar("T")


def prefetched(make: Callable[[int], T], n: int, ahead: bool = True) -> Iterator[T]:
    """``make(i)`` for ``i`` in ``range(n)``, the next one computed in a background thread when ``ahead``."""
    if not ahead or n <= 1:
        for i in range(n):
            yield make(i)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="egeunet-prefetch") as pool:
        pending = pool.submit(make, 0)
        for i in range(n):
            item = pending.result()
            if i + 1 < n:
                pending = pool.submit(make, i + 1)
            yield item
