"""The fixed train/test split of the embedded digits and the validation split carved out of it."""

import numpy as np
import pytest

from edgedfa import data
from edgedfa.errors import EdgeDFAError


def _rows(x):
    return {r.tobytes() for r in x.reshape(len(x), -1)}


def test_holdout_partitions_the_training_split_by_class():
    ds = data.digits()
    val = data.holdout(ds)
    assert len(val.x_train) + len(val.x_test) == len(ds.x_train)
    # every held-out sample comes from the training split, none from the test split
    assert _rows(val.x_test) <= _rows(ds.x_train)
    assert np.array_equal(np.sort(np.concatenate([val.y_train, val.y_test])), np.sort(ds.y_train))
    counts = np.bincount(val.y_test, minlength=10) / np.bincount(ds.y_train, minlength=10)
    assert np.all(np.abs(counts - 0.2) < 0.02)  # stratified: 20% of every class
    assert val.name == "digits-holdout"


def test_holdout_is_fixed_and_seeded():
    ds = data.digits()
    a, b = data.holdout(ds), data.holdout(ds)
    assert np.array_equal(a.x_test, b.x_test) and np.array_equal(a.y_train, b.y_train)
    c = data.holdout(ds, seed=1)
    assert not np.array_equal(a.x_test, c.x_test)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 2.0])
def test_holdout_rejects_a_fraction_outside_0_1(fraction):
    with pytest.raises(EdgeDFAError, match="holdout fraction"):
        data.holdout(data.digits(), fraction)
