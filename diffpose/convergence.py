"""The project's convergence rule, on the validation curve of the selection metric (one value per epoch, lower
is better).

A curve has converged after at least ``MIN_EPOCHS`` epochs when the best value of its last ``window`` epochs,
``window = max(WINDOW, ceil(epochs / 4))``, improves on the best value before them by less than ``TOLERANCE``
(relative). The floor of ``WINDOW`` epochs keeps a short plateau of a noisy curve from stopping a training that
still learns: GraFormer on the stand-in plateaued for six epochs at 46.5 mm after 18, which the last quarter
alone (6 of 24 epochs) read as converged, and went on to 40 mm.

``RULE`` names the rule: it is part of the identity of a training that stops by it
(:meth:`diffpose.config.Config.identity`), so a changed rule never reuses trainings stopped by another.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MIN_EPOCHS = 20
WINDOW = 10
TOLERANCE = 0.01
RULE = f"min{MIN_EPOCHS}-window{WINDOW}-quarter-tol{TOLERANCE:g}"
DESCRIPTION = (f"after {MIN_EPOCHS} epochs or more, the best validation value of the last {WINDOW} epochs or the "
               f"last quarter of the epochs, whichever is longer, improves on the best before it by less than "
               f"{TOLERANCE:.0%}")


def window(epochs: int) -> int:
    """The epochs at the end of a curve of ``epochs`` values that must not have improved."""
    return max(WINDOW, math.ceil(epochs / 4))


def _bests(curve: Sequence[float]) -> tuple[float, float] | None:
    """(best before the window, best in it) of a curve the rule reads (``MIN_EPOCHS`` values or more)."""
    n = len(curve)
    if n < MIN_EPOCHS:
        return None
    last = window(n)
    return min(curve[:n - last]), min(curve[n - last:])


def converged(curve: Sequence[float]) -> bool:
    """Whether ``curve`` has converged by the rule above."""
    bests = _bests(curve)
    return bests is not None and bests[1] > bests[0] * (1.0 - TOLERANCE)


def reading(curve: Sequence[float]) -> str:
    """What the rule reads on ``curve`` now, in words: how much its window improved on the best before it, which
    it stops under ``TOLERANCE``, or when it starts reading."""
    bests = _bests(curve)
    if bests is None:
        return f"the rule reads from epoch {MIN_EPOCHS}"
    gain = 1.0 - bests[1] / bests[0]
    return (f"the rule: the last {window(len(curve))} epochs' best is {gain:.1%} below the best before them "
            f"(converged under {TOLERANCE:.0%})")
