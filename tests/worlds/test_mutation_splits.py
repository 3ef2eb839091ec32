"""Mutation audit of worlds/dataset/splits.py: fractions that give train no share are refused, whatever the rest."""

from __future__ import annotations

import pytest

from worlds.dataset.splits import check_fractions, split_of


@pytest.mark.parametrize("fractions", [(0.0, 0.5, 0.5), (0, 1, 0), (0.0, 0.0, 1.0)])
def test_a_train_share_of_zero_is_refused(fractions):
    with pytest.raises(ValueError, match="train a positive share"):
        check_fractions(fractions)
    with pytest.raises(ValueError, match="train a positive share"):
        split_of(0, seed=0, fractions=fractions)


def test_valid_fractions_are_returned_as_floats():
    assert check_fractions((1, 0, 0)) == (1.0, 0.0, 0.0)
    assert check_fractions((0.8, 0.1, 0.1)) == (0.8, 0.1, 0.1)
    assert all(split_of(i, seed=3, fractions=(1, 0, 0)) == "train" for i in range(50))
