"""Which prefixes to list so a dense batch needs few LIST requests, relying on Prefix alone.

A LIST costs about as much for one key as for a thousand, and a backlog's batch of tasks is
dense: most tasks in its id range are in it. Targets sharing their first characters are then
listed with one ``Prefix=`` request. Only Prefix semantics are relied on, which every S3
server implements alike; never on listing order or StartAfter, which differ (SeaweedFS lists
in directory-tree order and skips a whole directory after ``StartAfter=<its name>``).
"""

from __future__ import annotations

import itertools
from typing import Iterator


def plan_listings(keys: list[str], *, dense: bool, spread: int = 4) -> Iterator[tuple[str, list[str]]]:
    """Which prefixes to list for these sorted, disjoint target keys: (prefix, keys it serves).

    Not dense: one listing per target. Dense: keys are grouped by their first ``m`` characters,
    ``m`` the shortest length giving ``spread`` groups; an inner group is listed whole (its
    whole prefix lies inside the batch's dense id range). The first and last groups reach out
    of that range, into keys of other tasks, so they are split again, down to single targets.
    """
    if not dense:
        for key in keys:
            yield key, [key]
        return
    yield from _split(keys, 1, True, True, spread)


def _split(keys: list[str], length: int, left_edge: bool, right_edge: bool,
           spread: int) -> Iterator[tuple[str, list[str]]]:
    if len(keys) == 1:
        yield keys[0], keys
        return
    longest = max(len(k) for k in keys)
    while length < longest and len({k[:length] for k in keys}) < min(spread, len(keys)):
        length += 1
    groups = [(prefix, list(group)) for prefix, group in itertools.groupby(keys, key=lambda k: k[:length])]
    for index, (prefix, group) in enumerate(groups):
        on_left, on_right = left_edge and index == 0, right_edge and index == len(groups) - 1
        if len(group) == 1:
            yield group[0], group
        elif on_left or on_right:
            yield from _split(group, length + 1, on_left, on_right, spread)
        else:
            yield prefix, group
