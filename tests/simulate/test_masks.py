"""credgui.metrics.masks (owned by the simulate work; tests live here)."""

from __future__ import annotations

import numpy as np
import pytest

from credgui.metrics.masks import soft_mask_from_map, soft_sphere_mask


def _cube_map(box=48):
    vol = np.zeros((box,) * 3, np.float32)
    vol[20:28, 18:30, 22:26] = 1.0
    return vol


def test_soft_mask_is_one_inside_extended_then_cosine_then_zero():
    vol = _cube_map()
    mask = soft_mask_from_map(vol, 2.0, threshold=0.5, extend_px=3, soft_edge_px=4)
    assert mask.dtype == np.float32 and mask.shape == vol.shape
    assert (mask[vol > 0.5] == 1).all()
    # along +x from the block's face at x = 25: 1 up to 3 px out, cosine over the next 4, then 0
    line = mask[24, 24, 25:36]
    assert np.allclose(line[:4], 1.0)
    assert np.allclose(line[4:8], 0.5 + 0.5 * np.cos(np.pi * np.arange(1, 5) / 4), atol=1e-6)
    assert (line[8:] == 0).all()
    assert np.all(np.diff(line) <= 1e-7)


def test_default_threshold_and_lowpass():
    vol = _cube_map() * 10.0 + 0.1  # solvent below 5 % of the maximum
    mask = soft_mask_from_map(vol, 2.0, extend_px=0, soft_edge_px=0)
    assert ((mask == 1) == (vol > 0.5)).all()
    smooth = soft_mask_from_map(vol, 2.0, lowpass_angst=10.0, extend_px=0, soft_edge_px=0)
    assert smooth.sum() > mask.sum()  # blurring spreads the region above threshold


def test_bad_masks_raise():
    with pytest.raises(ValueError):
        soft_mask_from_map(np.zeros((8, 8)), 1.0)
    with pytest.raises(ValueError):
        soft_mask_from_map(np.zeros((8, 8, 8)), 1.0)


def test_soft_sphere():
    m = soft_sphere_mask(32, 8, 4)
    assert m[16, 16, 16] == 1 and m[16, 16, 24] == 1 and m[16, 16, 28] == 0
    assert 0 < m[16, 16, 26] < 1
