"""Groups of classes (the `group` column: an address, a scenario, a product family) as the model and the
samplers need them: each class's group name and index, and per-class margins."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def class_group_names(class_groups: Mapping[int, object], num_classes: int) -> np.ndarray:
    """Group name of each class id (an object array; None for a class without a group). A class listed in
    several groups (a set) gets the first in sorted order."""
    out = np.full(num_classes, None, dtype=object)
    for cls, groups in class_groups.items():
        if isinstance(groups, str):
            out[int(cls)] = groups
        elif groups:
            out[int(cls)] = sorted(str(g) for g in groups)[0]
    return out


def class_group_ids(class_groups: Mapping[int, object], num_classes: int) -> list[int]:
    """Group index of each class id (-1: none), groups numbered in sorted order of their names: the model's
    pair-wise same-group margin and same-group-first mining compare these."""
    names = class_group_names(class_groups, num_classes)
    index = {g: i for i, g in enumerate(sorted({n for n in names if n is not None}))}
    return [index.get(n, -1) for n in names]


def group_class_margins(class_groups: dict[int, set[str]], same: float, default: float) -> list[float]:
    """Margin per class: `same` when the class shares a group with another class, else `default`.

    Classes in one group (a location, a product family) are the confusable ones, so they get the larger
    margin and are pushed further apart.
    """
    members: dict[str, int] = {}
    for groups in class_groups.values():
        for group in groups:
            members[group] = members.get(group, 0) + 1
    return [same if any(members[g] > 1 for g in class_groups[c]) else default for c in sorted(class_groups)]
