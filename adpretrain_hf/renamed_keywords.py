"""Old keyword names accepted for one release after a rename (issue 14: one meaning, one name).

``layers`` now means only backbone block numbers, 1-indexed (``ADPretrainConfig.layers``, the
``anomaly-features`` pipeline). The 0-based positions into a model's list of tapped layers that
detectors, ``ModelFeatureExtractor`` and ``fit_detector`` took as ``layers=`` are now
``layer_positions=``; the old keyword still works, with a ``FutureWarning`` naming the new one.
"""

from __future__ import annotations

import warnings
from typing import Optional, TypeVar

__all__ = ["LAYER_POSITIONS_NAME", "OLD_LAYER_POSITIONS_NAME", "renamed_keyword"]

LAYER_POSITIONS_NAME = "layer_positions"
OLD_LAYER_POSITIONS_NAME = "layers"  # its name before issue 14; accepted until the next release

T = TypeVar("T")


def renamed_keyword(
    new_value: Optional[T],
    old_value: Optional[T],
    owner: str,
    new: str = LAYER_POSITIONS_NAME,
    old: str = OLD_LAYER_POSITIONS_NAME,
    stacklevel: int = 3,
    why: str = "it now names 1-indexed backbone blocks only",
) -> Optional[T]:
    """The value to use when ``owner`` got ``new=new_value`` and/or the deprecated ``old=old_value``.

    ``None`` means "not given" for both. Giving the old one warns (``FutureWarning``, pointing at
    the caller of ``owner``); giving both raises, since it is unclear which one was meant.
    ``why`` says in the warning why the old name went (the default: the ``layers`` rename).
    """
    if old_value is None:
        return new_value
    if new_value is not None:
        raise TypeError(f"{owner} got both {new}= and {old}= (its old name): pass only {new}=")
    warnings.warn(
        f"{owner}: the keyword {old}= is deprecated ({why}) and will be "
        f"removed in the next release: pass {new}= instead (same values)",
        FutureWarning,
        stacklevel=stacklevel,
    )
    return old_value

