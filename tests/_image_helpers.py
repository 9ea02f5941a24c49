"""Smooth synthetic test images shared by the export and fast-inference tests."""

from __future__ import annotations

import numpy as np


def smooth_images(count: int, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    """Blurred discs on a gradient, z-scored: ``(1, size, size)`` float32 each (what int8
    calibration and parity checks need: real-looking structure, not noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    images = []
    for _ in range(count):
        cy, cx, r = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.1, 0.25)]
        disc = 1.0 / (1.0 + np.exp(((yy - cy) ** 2 + (xx - cx) ** 2 - r**2) * 200))
        image = disc + 0.5 * xx + 0.05 * rng.normal(size=(size, size))
        images.append(((image - image.mean()) / image.std())[None].astype(np.float32))
    return images
