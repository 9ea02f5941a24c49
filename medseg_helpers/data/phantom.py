"""Drawing one synthetic phantom: anatomy in millimetres, then MR or CT intensities.

`make_phantom` draws one phantom; `synthetic` calls it for each case of a dataset and
owns seeding, geometry and files. The anatomy (body, fat, spine, aorta, an organ and 0-3
lesions) is drawn by `medseg_helpers.data.phantom_anatomy` on voxel-centre coordinates in
mm, so the same random draws give the same anatomy at any shape; this module paints it
with MR or CT intensities, and voxel noise is drawn last.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medseg_helpers.data.phantom_anatomy import (
    PhantomAnatomy,
    PhantomGrid,
    WaveField,
    draw_anatomy,
    point_in,
)
from medseg_helpers.data.volume import check_spacing

FLAVOURS: tuple[str, ...] = ("mr", "ct")
_MIN_SHAPE = (4, 16, 16)

__all__ = ["FLAVOURS", "check_flavour", "check_shape", "make_phantom"]


def make_phantom(
    rng: np.random.Generator,
    flavour: str,
    shape: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
    num_lesions: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one phantom.

    Args:
        rng: the only source of randomness; geometry is drawn first, voxel noise last.
        flavour: ``"mr"`` or ``"ct"``.
        shape: ``(Z, Y, X)`` voxels, at least ``(4, 16, 16)``.
        spacing_mm: ``(sz, sy, sx)`` in mm, e.g. from `default_spacing_mm`.
        num_lesions: 0 to 3; ``None`` draws it (0 with probability 1/4, else 1-3).

    Returns:
        ``(image, label)``, both ``(Z, Y, X)``. ``image`` is float32 in arbitrary units
        (MR, about 0-1000) or int16 in HU (CT, -1024 to 3071); ``label`` is uint8 in
        ``{0, 1, 2}`` (`LABELS`).

    Raises:
        ValueError: unknown flavour, too small a shape, non-positive spacing, or
            ``num_lesions`` outside 0-3.
    """
    check_flavour(flavour)
    shape = check_shape(shape)
    spacing = check_spacing(spacing_mm)
    if num_lesions is None:
        num_lesions = 0 if rng.random() < 0.25 else int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    if not 0 <= num_lesions <= 3:
        raise ValueError(f"num_lesions must be 0 to 3; got {num_lesions}")
    grid = PhantomGrid.build(shape, spacing)  # type: ignore[arg-type]
    anatomy = draw_anatomy(rng, grid, num_lesions)
    render = _render_mr if flavour == "mr" else _render_ct
    return render(rng, grid, anatomy), anatomy.label


def check_flavour(flavour: str) -> None:
    """Raise ``ValueError`` unless ``flavour`` is one of `FLAVOURS`."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}; got {flavour!r}")


def check_shape(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """``shape`` as a tuple of ints ``(Z, Y, X)``; ``ValueError`` below ``(4, 16, 16)``."""
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or any(n < m for n, m in zip(shape, _MIN_SHAPE, strict=True)):
        raise ValueError(f"shape must be (Z, Y, X) of at least {_MIN_SHAPE}; got {shape}")
    return shape  # type: ignore[return-value]


def _paint(image: np.ndarray, mask: np.ndarray, value) -> None:
    """``image[mask] = value`` where ``mask`` and ``value`` broadcast to ``image``."""
    np.copyto(image, value, where=mask)


def _render_mr(rng: np.random.Generator, grid: PhantomGrid, a: PhantomAnatomy) -> np.ndarray:
    """T1-like contrast, partial-volume blur, bias field, Rician noise; float32."""
    tissue = rng.uniform(200, 260)  # muscle-like; organ brighter, fat brightest (T1)
    organ_value = tissue * rng.uniform(1.6, 1.9)
    texture = 1 + 0.05 * WaveField(rng, 10, (3.0, 8.0))(*a.scaled)
    image = np.zeros(grid.shape, dtype=np.float32)
    _paint(image, a.body, tissue * texture)
    _paint(image, a.fat_rim | a.visceral_fat, organ_value * rng.uniform(1.3, 1.45) * texture)
    _paint(image, a.vertebra, rng.uniform(330, 420))
    _paint(image, a.disc, rng.uniform(180, 230))
    _paint(image, a.cortex | a.arch, rng.uniform(70, 130))
    _paint(image, a.canal, rng.uniform(90, 150))
    _paint(image, a.aorta, rng.uniform(30, 90))  # flow void
    _paint(image, a.organ, organ_value * (1 + 0.6 * (texture - 1)))
    for weight in a.lesion_weights:
        weak = rng.random() < 0.15
        contrast = rng.uniform(0.2, 0.28) if weak else rng.uniform(0.3, 0.5)
        sign = 1 if rng.random() < 0.2 else -1  # mostly hypointense
        image += weight * (organ_value * (1 + sign * contrast) - image)
    image = ndimage.gaussian_filter(image, sigma=0.5)  # partial volume at edges
    bias_field = np.clip(WaveField(rng, 4, (0.15, 0.5))(*a.scaled), -2, 2)
    bias = np.exp(rng.uniform(0.08, 0.16) * bias_field)  # within x0.73-x1.38
    gain = rng.uniform(0.9, 1.1)
    sigma = rng.uniform(0.02, 0.045) * organ_value * gain
    image = image * bias * gain
    real = image + sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    return np.sqrt(real**2 + imaginary**2).astype(np.float32)


def _render_ct(rng: np.random.Generator, grid: PhantomGrid, a: PhantomAnatomy) -> np.ndarray:
    """Hounsfield units with bone, table, gas, optional metal; int16."""
    hu = np.full(grid.shape, -1000.0, dtype=np.float32)
    # Patient table, curved, below (posterior to) the body.
    lz, ly, lx = grid.half
    top = np.max(np.where(a.body, grid.y, -ly)) + rng.uniform(8, 20)
    curve = top - 15.0 * (grid.x / np.float32(lx)) ** 2
    _paint(hu, (grid.y > curve) & (grid.y < curve + rng.uniform(6, 12)), rng.uniform(-50, 150))
    texture = WaveField(rng, 10, (3.0, 8.0))(*a.scaled)
    _paint(hu, a.body, rng.uniform(35, 45) + 6 * texture)
    _paint(hu, a.fat_rim | a.visceral_fat, rng.uniform(-110, -90) + 8 * texture)
    gas = a.visceral & ~a.organ & (WaveField(rng, 8, (2.0, 5.0))(*a.scaled) > 2.2)
    _paint(hu, gas, rng.uniform(-950, -850))
    # Ribs: small bone discs in the abdominal wall, upper part of the scan only.
    rib_start = rng.uniform(-0.3, 0.3) * lz
    on_wall = (1 + a.wall_radius) / 2
    radius = max(4.5, 0.6 * grid.spacing[2])
    bcy, bcx, by, bx = a.ellipse
    for angle in np.deg2rad(rng.uniform(-25, 25) + np.array([150, 175, 200, 340, 5, 30])):
        turn = angle + np.deg2rad(rng.uniform(-8, 8)) * grid.z / np.float32(lz)
        rib_y = bcy + on_wall * by * np.sin(turn) / a.taper
        rib_x = bcx + on_wall * bx * np.cos(turn) / a.taper
        rib = ((grid.y - rib_y) ** 2 + (grid.x - rib_x) ** 2 < radius**2) & (grid.z > rib_start)
        _paint(hu, rib & ~a.organ, rng.uniform(700, 1000))
    _paint(hu, a.vertebra, rng.uniform(250, 400))
    _paint(hu, a.disc, rng.uniform(70, 100))
    _paint(hu, a.cortex & ~a.disc, rng.uniform(900, 1300))
    _paint(hu, a.arch, rng.uniform(700, 1000))
    _paint(hu, a.canal, rng.uniform(10, 30))
    _paint(hu, a.aorta, rng.uniform(120, 200))
    organ_value = rng.uniform(58, 78)
    _paint(hu, a.organ, organ_value + 3 * texture)
    for weight in a.lesion_weights:
        value = organ_value - rng.uniform(15, 25) if rng.random() < 0.15 else rng.uniform(10, 30)
        hu += weight * (value - hu)
    hu = ndimage.gaussian_filter(hu, sigma=0.5)  # partial volume at edges
    if rng.random() < 0.35:
        _add_metal(rng, grid, a, hu)
    noise = ndimage.gaussian_filter(
        rng.standard_normal(grid.shape, dtype=np.float32), sigma=(0, 0.7, 0.7)
    )
    hu += rng.uniform(10, 20) / max(float(noise.std()), 1e-6) * noise
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def _add_metal(rng: np.random.Generator, grid: PhantomGrid, a: PhantomAnatomy,
               hu: np.ndarray) -> None:
    """A ~3000 HU clip just outside the organ, with radial streaks through its slices."""
    centre, axes, rot = a.organ_frame
    index = point_in(rng, grid, a.visceral & (a.label == 0), centre, rot, axes, (1.1, 1.4), 0.3)
    if index is None:
        return
    point = grid.to_mm(index)
    radius = max(3.0, 0.6 * grid.spacing[2])
    planar = np.sqrt((grid.y - point[1]) ** 2 + (grid.x - point[2]) ** 2)
    dist = np.sqrt((grid.z - point[0]) ** 2 + planar**2)
    in_slices = np.abs(grid.z - point[0]) < max(grid.spacing[0], radius)
    angle = np.arctan2(grid.y - point[1], grid.x - point[2])
    streaks = rng.uniform(100, 250) * np.cos(rng.integers(5, 9) * angle + rng.uniform(0, np.pi))
    hu += streaks * 20.0 / (planar + 20.0) * in_slices * a.body
    clip = (dist < radius) & a.visceral & (a.label == 0)
    clip[index] = True
    hu[clip] = rng.uniform(2800, 3071)
