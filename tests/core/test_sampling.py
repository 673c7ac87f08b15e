from collections import Counter

import numpy as np
import pytest

from kftune.core import sampling
from kftune.core.sampling import allocate, sample_indices, split_indices, tagging_strata, target_count

TREC_TRAIN = {"ABBR": 86, "DESC": 1162, "ENTY": 1250, "HUM": 1223, "LOC": 835, "NUM": 896}


def trec_like_keys(seed: int = 0) -> list[str]:
    keys = [label for label, n in TREC_TRAIN.items() for _ in range(n)]
    np.random.default_rng(seed).shuffle(keys)
    return keys


@pytest.mark.parametrize("n, fraction, expected", [
    (5452, 0.1, 545), (4907, 0.1, 491), (545, 0.1, 55), (500, 0.1, 50), (3394, 0.1, 339),
    (10, 0.25, 3), (10, 0.01, 1), (0, 0.5, 0), (7, 1.0, 7), (7, 0.0, 0),
])
def test_target_count_rounds_half_up_with_a_floor_of_one(n, fraction, expected):
    assert target_count(n, fraction) == expected


def test_target_count_refuses_fractions_outside_0_1():
    with pytest.raises(ValueError):
        target_count(10, 1.5)


def test_allocate_sums_exactly_and_is_proportional():
    quota = allocate(dict(TREC_TRAIN), 545)
    assert sum(quota.values()) == 545
    for label, n in TREC_TRAIN.items():
        assert abs(quota[label] - n * 545 / 5452) < 1


def test_allocate_breaks_ties_independently_of_dict_order():
    a = allocate({"x": 1, "y": 1, "z": 1}, 1)
    b = allocate({"z": 1, "y": 1, "x": 1}, 1)
    assert a == b and sum(a.values()) == 1


def test_sample_is_stratified_and_deterministic():
    keys = trec_like_keys()
    picked = sample_indices(keys, 0.1, seed=1)
    assert len(picked) == 545
    assert np.all(np.diff(picked) > 0)  # sorted, no duplicates
    assert np.array_equal(picked, sample_indices(keys, 0.1, seed=1))
    assert not np.array_equal(picked, sample_indices(keys, 0.1, seed=2))
    counts = Counter(keys[i] for i in picked)
    for label, n in TREC_TRAIN.items():
        assert abs(counts[label] / 545 - n / 5452) < 0.01  # within 1 point


def test_sample_is_nested_across_fractions():
    keys = trec_like_keys()
    small, large = set(sample_indices(keys, 0.05, seed=3)), set(sample_indices(keys, 0.2, seed=3))
    assert small < large


def test_unstratified_sample_with_none_keys():
    picked = sample_indices([None] * 1000, 0.3, seed=7)
    assert len(picked) == 300 and len(set(picked.tolist())) == 300


def test_split_is_a_disjoint_cover():
    keys = trec_like_keys()
    kept, carved = split_indices(keys, 0.1, seed=1)
    assert len(carved) == 545 and len(kept) == 5452 - 545
    assert set(kept.tolist()).isdisjoint(carved.tolist())
    assert sorted(kept.tolist() + carved.tolist()) == list(range(5452))
    assert Counter(keys[i] for i in carved)["ABBR"] == round(86 * 0.1)  # 8.6 -> 9 (largest remainder)


def test_carving_and_downsampling_use_different_streams():
    keys = [None] * 200
    _, carved = split_indices(keys, 0.5, seed=1, stream=sampling.STREAM_DEV)
    sampled = sample_indices(keys, 0.5, seed=1, stream=sampling.STREAM_DOWNSAMPLE)
    assert not np.array_equal(carved, sampled)


def test_tagging_strata_picks_the_rarest_entity_type():
    sets = [frozenset({"person"}), frozenset({"person", "product"}), frozenset(), frozenset({"person"}),
            frozenset({"location", "person"}), frozenset({"location"})]
    # sentence frequencies: person 4, location 2, product 1
    assert tagging_strata(sets) == ["person", "product", "O", "person", "location", "location"]
