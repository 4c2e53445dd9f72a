"""Train/val/test assignment that never moves a sample when others come or go.

A sample keeps the split its source gives (a top-level ``train/``, ``val/`` or
``test/`` folder, or the labels table's split column). Otherwise its split comes
from a salted sha256 of its group id, when the table has a group column, or of its
sample id: the first 8 bytes of the digest, read as an unsigned integer and divided
by 2**64, give a number u in [0, 1) that is compared with the cumulative fractions
in the order train, val, test. The split depends on nothing but the key, the salt
and the fractions, so adding or removing other samples never changes it, and exact
duplicates (the same sample id) always share a split.
"""

from __future__ import annotations

import hashlib

from imgprep.config import SPLITS, SplitSettings

__all__ = ["SPLIT_ALIASES", "assign_split", "normalize_split_name", "split_unit"]

SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}


def normalize_split_name(name: str) -> str | None:
    """Return ``train``, ``val`` or ``test`` for a split name or alias, else None.

    Matching ignores case and surrounding whitespace, so ``Validation`` is ``val``.
    """
    return SPLIT_ALIASES.get(name.strip().lower())


def split_unit(key: str, salt: str) -> float:
    """Return the stable number in [0, 1) that places ``key`` among the splits."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(
    sample_id: str,
    settings: SplitSettings,
    *,
    source_split: str | None = None,
    group: str | None = None,
) -> str:
    """Return the split of one sample.

    Parameters
    ----------
    sample_id : str
        The sha256 hex digest of the source file's bytes.
    settings : SplitSettings
        Fractions, salt and whether the source's split is used.
    source_split : str, optional
        The split the source gives, already normalized to train/val/test.
    group : str, optional
        Group id; all samples of a group get the same split.
    """
    if source_split is not None and settings.use_source_split:
        return source_split
    key = f"group:{group}" if group else f"sample:{sample_id}"
    unit = split_unit(key, settings.salt)
    cumulative = 0.0
    for name in SPLITS:
        cumulative += settings.fractions.get(name, 0.0)
        if unit < cumulative:
            return name
    # Rounding can leave the cumulative sum a hair below 1.0; the last split with a
    # positive fraction takes the remainder.
    for name in reversed(SPLITS):
        if settings.fractions.get(name, 0.0) > 0.0:
            return name
    return "train"
