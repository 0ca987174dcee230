"""runtime/packing.py: a padded batch laid out in packed rows and back, each text whole and apart from the others."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.packing import pack


def _mask(lengths: list[int], left: bool = False) -> np.ndarray:
    width = max(lengths)
    mask = np.zeros((len(lengths), width), dtype=np.int64)
    for i, n in enumerate(lengths):
        if left:
            mask[i, width - n:] = 1
        else:
            mask[i, :n] = 1
    return mask


@pytest.mark.parametrize("lengths", [[12], [12, 5, 30], [7] * 16, [3, 64, 1, 40, 40, 40], [90, 2]])
@pytest.mark.parametrize("left", [False, True])
def test_every_token_goes_to_one_slot_and_comes_back(lengths: list[int], left: bool) -> None:
    mask = _mask(lengths, left)
    layout = pack(mask, capacity=64)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 30000, size=mask.shape) * mask
    packed = layout.pack(ids)
    feeds = layout.feeds()
    # No two tokens share a slot, every real token is in one, and nothing else is.
    assert (feeds["segments"] > 0).sum() == sum(lengths)
    assert np.count_nonzero(packed) == np.count_nonzero(ids)
    for text, n in enumerate(lengths):
        where = feeds["segments"] == text + 1
        assert where.sum() == n
        rows = np.nonzero(where)[0]
        assert len(set(rows)) == 1, "a text is split across rows"
        # In its row the text's tokens are contiguous, in order, with positions 0..n-1.
        np.testing.assert_array_equal(feeds["position_ids"][where], np.arange(n))
        np.testing.assert_array_equal(packed[where], ids[text][mask[text] == 1])
    # Per-token outputs come back to the padded layout, zeros on the padding.
    outputs = np.stack([packed, packed * 2], axis=-1).astype(np.float32)
    back = layout.unpack(outputs, mask.shape)
    np.testing.assert_array_equal(back[..., 0], ids)
    np.testing.assert_array_equal(back[..., 1], ids * 2)


def test_rows_stay_near_capacity_and_balanced() -> None:
    layout = pack(_mask([16] * 16), capacity=64)  # 256 tokens: four rows of four texts
    assert layout.shape == (4, 64)
    assert pack(_mask([16] * 3), capacity=64).shape == (1, 48)  # one row, only as wide as its texts
    assert pack(_mask([100, 10]), capacity=64).shape == (2, 100)  # capacity grows to the longest text, no further
    # 66 tokens over capacity 64: two rows, balanced (34 wide), not one full row and a short one.
    assert pack(_mask([30, 20, 10, 6]), capacity=64).shape == (2, 36)
