"""What a resumed run checks about its data before it trains on: the classes are the ones the
run's labels meant.

A model's outputs are labels, and a label means the class at its place in the run's list of
classes. Renamed class folders, a class added or removed, or a classes.txt in another order give
labels other meanings: a run resumed on them would train on silently while its validation
accuracy collapsed. They are refused in one line naming the differences. Class folders that
swapped their names keep the class list as it was: their images tell (see
:mod:`vitmix.data.class_fingerprint`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..data.class_fingerprint import moved_classes

__all__ = ["check_same_classes", "check_same_images_per_class", "describe_class_change"]

_SHOWN = 5  # names listed per kind of difference; the rest are counted


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def describe_class_change(then: Sequence[str], now: Sequence[str]) -> str:
    """How the class list ``now`` differs from ``then``, in words (empty when it does not)."""
    then, now = list(then), list(now)
    if then == now:
        return ""
    gone = [c for c in then if c not in set(now)]
    added = [c for c in now if c not in set(then)]
    parts = []
    if gone:
        parts.append(f"{_names(gone)} no longer there")
    if added:
        parts.append(f"{_names(added)} new")
    if not parts:  # the same names in another order: say where the labels moved
        moved = [f"label {i} was {a!r}, now {b!r}"
                 for i, (a, b) in enumerate(zip(then, now, strict=True)) if a != b]
        more = f" and {len(moved) - _SHOWN} more" if len(moved) > _SHOWN else ""
        parts.append(f"the same names in another order ({'; '.join(moved[:_SHOWN])}{more})")
    return "; ".join(parts)


def check_same_classes(then: Sequence[str] | None, now: Sequence[str], data_name: str,
                       source: str) -> None:
    """ValueError when the data's classes ``now`` are not the run's ``then`` (from the
    checkpoint ``source``; None: a checkpoint that kept none, which is not checked)."""
    if then is None:
        return
    change = describe_class_change(then, now)
    if change:
        raise ValueError(f"cannot resume: the classes of {data_name} are not those {source} "
                         f"was trained on ({change}); its labels would now mean other classes. "
                         f"Put the data back as it was, or start a new run with --out")


def check_same_images_per_class(then: dict | None, now: dict | None, data_name: str,
                                source: str) -> None:
    """ValueError when images the run trained under one class are now under another's name
    (class folders renamed into each other); ``then`` from the checkpoint ``source``, None when
    it kept no fingerprint (an earlier vitmix, data that is no image tree)."""
    if not then or not now:
        return
    if not (isinstance(then, dict) and all(
            isinstance(name, str) and isinstance(digests, list)
            and all(isinstance(d, str) for d in digests) for name, digests in then.items())):
        raise ValueError(f"cannot resume: {source} is damaged: its class_fingerprint is not a "
                         f"mapping of class names to lists of digests")
    moved = moved_classes(then, now)
    if moved:
        shown = "; ".join(f"those of {a!r} are now in {b!r}" for a, b in moved[:_SHOWN])
        more = f" and {len(moved) - _SHOWN} more" if len(moved) > _SHOWN else ""
        raise ValueError(f"cannot resume: the class folders of {data_name} hold other images "
                         f"than when {source} was trained ({shown}{more}): folders renamed into "
                         f"each other, so its labels would now mean other classes. Put the data "
                         f"back as it was, or start a new run with --out")
