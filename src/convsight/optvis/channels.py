"""Channel lists: ``'0-3,7'`` -> ``[0, 1, 2, 3, 7]``, and per-channel seeds."""

from __future__ import annotations

import re
from collections.abc import Sequence

from convsight.errors import ConvsightError

# Without the layer's channel count, channel numbers stop here (a parsed list stays small).
MAX_CHANNELS = 65_536
_CHANNEL_PART = re.compile(r"(-?[0-9]+)(?:\s*-\s*(-?[0-9]+))?")


def parse_channels(text: str, limit: int | None = None) -> list[int]:
    """'0-3,7' -> [0, 1, 2, 3, 7]. ``limit``: the layer's channel count (else ``MAX_CHANNELS``).

    Every part is checked against the bound (and for overlaps) before the list is built, so
    a huge range is refused at once; a reversed range, a negative number, a channel given
    twice, garbage or nothing at all is refused with one sentence.
    """
    bound = MAX_CHANNELS if limit is None else int(limit)
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ConvsightError("no channels given: use numbers and ranges like 0-15,32")
    ranges: list[tuple[int, int]] = []
    for part in parts:
        match = _CHANNEL_PART.fullmatch(part)
        if match is None:
            at = f" (at '{part}')" if part != str(text).strip() else ""
            raise ConvsightError(
                f"cannot read channels '{text}'{at}: use numbers and ranges like 0-15,32"
            )
        lo = _number(match[1], bound, limit)
        hi = lo if match[2] is None else _number(match[2], bound, limit)
        if min(lo, hi) < 0:
            raise ConvsightError(f"channel {min(lo, hi)} is negative: channels count from 0")
        if hi < lo:
            raise ConvsightError(f"reversed range {lo}-{hi} (did you mean {hi}-{lo}?)")
        if hi >= bound:
            _out_of_range(str(hi), bound, limit)
        ranges.append((lo, hi))
    ordered = sorted(ranges)
    for (_, prev_hi), (lo, _) in zip(ordered, ordered[1:], strict=False):
        if lo <= prev_hi:
            raise ConvsightError(f"channel {lo} is given twice in '{text}'")
    # Disjoint ranges inside [0, bound): the list has at most ``bound`` entries.
    return [c for lo, hi in ranges for c in range(lo, hi + 1)]


def _number(digits: str, bound: int, limit: int | None) -> int:
    """``digits`` as an int; a number far past ``bound`` (a thousand digits...) is refused
    from its length, before Python converts it."""
    if len(digits.lstrip("-").lstrip("0")) > 20:
        shown = f"{digits[:12]}... ({len(digits.lstrip('-'))} digits)"
        if digits.startswith("-"):
            raise ConvsightError(f"channel {shown} is negative: channels count from 0")
        _out_of_range(shown, bound, limit)
    return int(digits)


def _out_of_range(channel: str, bound: int, limit: int | None) -> None:
    """Refuse ``channel`` (at or past ``bound``) naming the layer's channel count."""
    if limit is None:
        raise ConvsightError(
            f"channel {channel} is out of range: channel numbers go up to {bound - 1}"
        )
    raise ConvsightError(
        f"channel {channel} is out of range: the layer has {bound} channels (0-{bound - 1})"
    )


def channel_seeds(seed: int, channels: Sequence[int]) -> list[int]:
    """Per-row seeds from (seed, channel): a channel renders the same in any batch."""
    return [seed * 1_000_003 + int(c) for c in channels]
