"""Split assignment: stable under additions, shared by duplicates and groups."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from imgprep.config import SplitSettings
from imgprep.split import assign_split, normalize_split_name

ids = st.binary(min_size=1, max_size=16).map(lambda b: hashlib.sha256(b).hexdigest())


@hypothesis_settings(max_examples=50, deadline=None)
@given(
    existing=st.lists(ids, min_size=1, max_size=50), added=st.lists(ids, max_size=50)
)
def test_split_unchanged_by_added_samples(existing, added):
    settings = SplitSettings()
    before = {sample: assign_split(sample, settings) for sample in existing}
    after = {sample: assign_split(sample, settings) for sample in existing + added}
    for sample, split in before.items():
        assert after[sample] == split, sample


def test_duplicates_share_split():
    settings = SplitSettings()
    sample = hashlib.sha256(b"same bytes").hexdigest()
    assert assign_split(sample, settings) == assign_split(sample, settings)


def test_group_decides_split():
    settings = SplitSettings()
    samples = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(200)]
    splits = {assign_split(s, settings, group="patient-7") for s in samples}
    assert len(splits) == 1


def test_source_split_wins_when_used():
    sample = hashlib.sha256(b"x").hexdigest()
    assert assign_split(sample, SplitSettings(), source_split="test") == "test"
    ignored = SplitSettings(use_source_split=False)
    assert assign_split(sample, ignored, source_split="test") == assign_split(
        sample, ignored
    )


def test_fractions_roughly_respected():
    settings = SplitSettings(fractions={"train": 0.7, "val": 0.2, "test": 0.1})
    samples = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20000)]
    counts = {"train": 0, "val": 0, "test": 0}
    for sample in samples:
        counts[assign_split(sample, settings)] += 1
    assert abs(counts["train"] / 20000 - 0.7) < 0.02
    assert abs(counts["val"] / 20000 - 0.2) < 0.02
    assert abs(counts["test"] / 20000 - 0.1) < 0.02


def test_zero_fraction_split_stays_empty():
    settings = SplitSettings(fractions={"train": 0.9, "val": 0.1, "test": 0.0})
    samples = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(2000)]
    assert all(assign_split(s, settings) != "test" for s in samples)


def test_salt_changes_assignment():
    samples = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(500)]
    first = [assign_split(s, SplitSettings(salt="a")) for s in samples]
    second = [assign_split(s, SplitSettings(salt="b")) for s in samples]
    assert first != second


def test_split_aliases():
    assert normalize_split_name(" Validation ") == "val"
    assert normalize_split_name("TRAINING") == "train"
    assert normalize_split_name("testing") == "test"
    assert normalize_split_name("holdout") is None
