"""The contract of a work backend and the one that runs in this process."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import torch


class Work(Protocol):
    """Runs ``fn(**shared, **item)`` for every item; yields (index, result) as each finishes."""

    @property
    def workers(self) -> int:
        """Tasks that can run at once."""
        ...

    def map(
        self, fn: Callable[..., Any], shared: dict[str, Any], items: Sequence[dict[str, Any]]
    ) -> Iterator[tuple[int, Any]]: ...

    def describe(self) -> dict[str, Any]:
        """What ran the work, for the output JSON."""
        ...

    def close(self) -> None: ...


class LocalWork:
    """Every call in this process, one after another, at torch's thread count."""

    workers = 1

    def map(
        self, fn: Callable[..., Any], shared: dict[str, Any], items: Sequence[dict[str, Any]]
    ) -> Iterator[tuple[int, Any]]:
        for i, item in enumerate(items):
            yield i, fn(**shared, **item)

    def describe(self) -> dict[str, Any]:
        return {"backend": "local", "workers": 1, "threads": torch.get_num_threads()}

    def close(self) -> None:
        pass


def shards(count: int, batch_size: int, parts: int) -> list[dict[str, int]]:
    """``range(count)`` cut into at most ``parts`` slices (``start``, ``stop``) that begin at
    multiples of ``batch_size``: each sees the batches a single pass would."""
    batches = -(-count // batch_size)
    per = -(-batches // max(parts, 1)) * batch_size if count else batch_size
    return [{"start": s, "stop": min(s + per, count)} for s in range(0, count, per)]
