"""The anatomy of a synthetic phantom, drawn in millimetres (`draw_anatomy`).

`medseg_helpers.data.phantom` draws a phantom in two steps: the anatomy here (body with
its fat rim, abdominal wall, spine, aorta, one organ and 0-3 lesions, as boolean masks
and soft lesion maps), then MR or CT intensities there. Everything is drawn on
voxel-centre coordinates in mm from the volume centre (`PhantomGrid`) and every random
texture is a `WaveField` evaluated at those coordinates, so the same random draws give
the same anatomy at any shape and spacing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PhantomAnatomy", "PhantomGrid", "WaveField", "draw_anatomy", "point_in"]


@dataclass(frozen=True)
class PhantomGrid:
    """Voxel-centre coordinates in mm from the volume centre, as open (broadcast) grids."""

    z: np.ndarray  # (Z, 1, 1) float32
    y: np.ndarray  # (1, Y, 1)
    x: np.ndarray  # (1, 1, X)
    half: tuple[float, float, float]  # half field of view (Lz, Ly, Lx), mm
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @classmethod
    def build(cls, shape: tuple[int, int, int], spacing: tuple[float, float, float]
              ) -> PhantomGrid:
        """The grid of a ``(Z, Y, X)`` volume with ``spacing`` ``(sz, sy, sx)`` in mm."""
        axes = [
            ((np.arange(n) - (n - 1) / 2) * s).astype(np.float32)
            for n, s in zip(shape, spacing, strict=True)
        ]
        half = tuple(n * s / 2 for n, s in zip(shape, spacing, strict=True))
        return cls(
            axes[0][:, None, None],
            axes[1][None, :, None],
            axes[2][None, None, :],
            half,
            shape,
            spacing,
        )  # type: ignore[arg-type]

    def to_mm(self, index: tuple[int, int, int]) -> np.ndarray:
        """(z, y, x) mm of a voxel centre, relative to the volume centre."""
        return np.array(
            [(i - (n - 1) / 2) * s for i, n, s in zip(index, self.shape, self.spacing, strict=True)]
        )

    def nearest_index(self, point_mm) -> tuple[int, int, int]:
        """Index of the voxel nearest to ``point_mm`` (z, y, x), clipped into the volume."""
        return tuple(  # type: ignore[return-value]
            int(np.clip(np.rint(p / s + (n - 1) / 2), 0, n - 1))
            for p, s, n in zip(point_mm, self.spacing, self.shape, strict=True)
        )

    def scaled(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coordinates divided by the in-plane half field of view (isotropic in mm)."""
        scale = max(self.half[1], self.half[2])
        return self.z / scale, self.y / scale, self.x / scale


class WaveField:
    """Smooth random field, mean 0 and variance 1: a sum of random plane waves.

    Evaluated at any coordinates, so one draw gives the same field at every resolution.
    ``cycles`` is the range of spatial frequency in cycles per unit of the coordinates.
    """

    def __init__(self, rng: np.random.Generator, num_waves: int, cycles: tuple[float, float]):
        directions = rng.standard_normal((num_waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        frequency = rng.uniform(*cycles, size=num_waves)
        self.k = directions * (2 * np.pi * frequency)[:, None]
        self.phase = rng.uniform(0, 2 * np.pi, size=num_waves)
        amplitude = 1.0 / frequency
        self.amplitude = amplitude / np.sqrt(np.sum(amplitude**2) / 2)

    def __call__(self, z, y, x) -> np.ndarray:
        total = np.float32(0)
        for (kz, ky, kx), phase, amplitude in zip(self.k, self.phase, self.amplitude, strict=True):
            wave = np.cos(float(kz) * z + float(ky) * y + float(kx) * x + float(phase))
            total = total + float(amplitude) * wave
        return total


def _rotation(yaw: float, tilt_y: float, tilt_x: float) -> np.ndarray:
    """(3, 3) rotation acting on (z, y, x) vectors: in-plane ``yaw``, then two small tilts."""
    cy, sy, ca, sa, cb, sb = (
        np.cos(yaw),
        np.sin(yaw),
        np.cos(tilt_y),
        np.sin(tilt_y),
        np.cos(tilt_x),
        np.sin(tilt_x),
    )
    in_plane = np.array([[1, 0, 0], [0, cy, -sy], [0, sy, cy]])
    about_y = np.array([[ca, 0, sa], [0, 1, 0], [-sa, 0, ca]])  # mixes z and x
    about_x = np.array([[cb, -sb, 0], [sb, cb, 0], [0, 0, 1]])  # mixes z and y
    return in_plane @ about_y @ about_x


def _local(grid: PhantomGrid, centre, rot: np.ndarray) -> tuple[np.ndarray, ...]:
    """Coordinates in a rotated frame centred at ``centre`` (z, y, x mm): ``rot.T @ d``."""
    d = (
        grid.z - np.float32(centre[0]),
        grid.y - np.float32(centre[1]),
        grid.x - np.float32(centre[2]),
    )
    return tuple(sum(float(rot[j, i]) * d[j] for j in range(3)) for i in range(3))


def _radius(local, axes) -> np.ndarray:
    """Ellipsoid radius: < 1 inside the ellipsoid with semi-axes ``axes``."""
    return np.sqrt(sum((c / np.float32(a)) ** 2 for c, a in zip(local, axes, strict=True)))


def _disc(grid: PhantomGrid, y0: float, x0: float, radius: float) -> np.ndarray:
    """(1, Y, X) in-plane distance from (y0, x0) divided by ``radius``."""
    return np.sqrt((grid.y - y0) ** 2 + (grid.x - x0) ** 2) / np.float32(radius)


@dataclass
class PhantomAnatomy:
    """The masks of one phantom, on the `PhantomGrid` it was drawn on.

    Masks are bool, ``(Z, Y, X)`` or broadcastable to it; ``label`` is the uint8 label map
    ``(Z, Y, X)`` (0 background, 1 organ, 2 lesion); geometry is in mm.
    """

    body: np.ndarray  # bool masks, (Z, Y, X) or broadcastable
    fat_rim: np.ndarray
    visceral: np.ndarray  # inside the abdominal wall
    visceral_fat: np.ndarray
    vertebra: np.ndarray
    cortex: np.ndarray
    disc: np.ndarray
    canal: np.ndarray
    arch: np.ndarray  # posterior elements
    aorta: np.ndarray
    organ: np.ndarray
    lesion_weights: list[np.ndarray]  # soft lesion maps in [0, 1], one per lesion
    label: np.ndarray  # uint8
    ellipse: tuple[float, float, float, float]  # body centre (y, x) and semi-axes (y, x), mm
    taper: np.ndarray  # (Z, 1, 1) factor dividing the semi-axes along z
    wall_radius: float  # relative ellipse radius where the abdominal wall ends
    scaled: tuple[np.ndarray, np.ndarray, np.ndarray]
    organ_frame: tuple[np.ndarray, tuple[float, float, float], np.ndarray]  # centre, axes, rot


def draw_anatomy(rng: np.random.Generator, grid: PhantomGrid, num_lesions: int
                 ) -> PhantomAnatomy:
    """Draw body, fat, spine, aorta, one organ and ``num_lesions`` lesions inside it.

    Args:
        rng: the source of every random draw (shapes, positions, textures).
        grid: voxel-centre coordinates in mm (`PhantomGrid.build`).
        num_lesions: 0 to 3; a lesion that finds no room inside the organ is skipped.

    Returns:
        the masks, soft lesion maps in [0, 1] and the ``(Z, Y, X)`` uint8 label map.
    """
    lz, ly, lx = grid.half
    scaled = grid.scaled()
    # Body: an elliptic cylinder with a wobbly outline, slightly tapering along z.
    by, bx = rng.uniform(0.55, 0.68) * ly, rng.uniform(0.78, 0.9) * lx
    bcy, bcx = rng.uniform(-0.04, 0.04) * ly, rng.uniform(-0.04, 0.04) * lx
    taper = 1 + rng.uniform(-0.06, 0.06) * grid.z / np.float32(lz)
    outline = 1 + 0.025 * WaveField(rng, 6, (0.3, 1.2))(*scaled)
    body_radius = np.sqrt(((grid.y - bcy) / by) ** 2 + ((grid.x - bcx) / bx) ** 2) * taper
    body_radius = body_radius / outline
    fat, wall = rng.uniform(0.04, 0.1), rng.uniform(0.05, 0.08)
    body = body_radius < 1
    visceral = body_radius < 1 - fat - wall
    # Spine (posterior, +y in LPS) and aorta in front of it, straight along z.
    rv = rng.uniform(0.1, 0.13) * bx
    yv, xv = bcy + by * rng.uniform(0.42, 0.5), bcx + rng.uniform(-0.02, 0.02) * bx
    cortex_mm = max(2.5, 0.7 * grid.spacing[2])
    vertebra = _disc(grid, yv, xv, rv) < 1
    cortex = vertebra & (_disc(grid, yv, xv, rv - cortex_mm) >= 1)
    period, phase = rng.uniform(28, 34), rng.uniform(0, 34)
    disc = vertebra & (((grid.z - phase) % np.float32(period)) < np.float32(0.22 * period))
    rc = 0.45 * rv
    yc = yv + rv + 1.1 * rc
    arch_mm = max(4.0, grid.spacing[2])
    canal = _disc(grid, yc, xv, rc) < 1
    arch = (_disc(grid, yc, xv, rc + arch_mm) < 1) & ~canal & (grid.y > yc - 0.3 * rc)
    ysp = yc + rc + arch_mm + 0.8 * rc
    arch = arch | ((((grid.y - ysp) / rc) ** 2 + ((grid.x - xv) / (0.3 * rc)) ** 2) < 1)
    ra = rng.uniform(0.055, 0.075) * bx
    ya, xa = yv - rv - ra - 4.0, xv + rng.uniform(0.2, 0.6) * rv
    aorta = _disc(grid, ya, xa, ra) < 1
    spine_zone = (_disc(grid, yv, xv, rv + 6) < 1) | (_disc(grid, ya, xa, ra + 5) < 1)
    visceral_fat = visceral & (WaveField(rng, 10, (1.5, 4.0))(*scaled) > rng.uniform(0.7, 1.3))
    # Organ: a deformed ellipsoid on the patient's right (-x), sometimes with a lobe.
    axes = np.array(
        [rng.uniform(0.45, 0.66) * lz, rng.uniform(0.35, 0.65) * by, rng.uniform(0.3, 0.55) * bx]
    )
    rot = _rotation(rng.uniform(-0.6, 0.6), rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1))
    has_lobe = rng.random() < 0.6
    angle = rng.uniform(0, 2 * np.pi)
    lobe_offset = rot @ (
        rng.uniform(0.85, 1.05) * np.array([0.0, axes[1] * np.sin(angle), axes[2] * np.cos(angle)])
    )
    lobe_axes = axes * rng.uniform(0.45, 0.65, size=3)
    reach = 1.25  # lesions may reach this ellipsoid radius; keep it off the end slices
    extent = reach * np.sqrt(np.sum((rot[0] * axes) ** 2))
    if has_lobe:
        lobe_extent = reach * np.sqrt(np.sum((rot[0] * lobe_axes) ** 2))
        extent = max(extent, abs(lobe_offset[0]) + lobe_extent)
    cap = min(0.8, 1 - 1.5 / grid.shape[0]) * lz  # below the centre of the end slices
    if extent > cap:
        shrink = cap / extent
        axes, lobe_axes, lobe_offset = axes * shrink, lobe_axes * shrink, lobe_offset * shrink
        extent = cap
    centre = np.array(
        [
            rng.uniform(-1, 1) * (cap - extent),
            bcy + rng.uniform(-0.3, 0.05) * by,
            bcx - rng.uniform(0.15, 0.4) * bx,
        ]
    )
    local = _local(grid, centre, rot)
    radius = _radius(local, axes)
    if has_lobe:
        radius = np.minimum(radius, _radius(_local(grid, centre + lobe_offset, rot), lobe_axes))
    unit = tuple(c / np.float32(a) for c, a in zip(local, axes, strict=True))
    bumps = np.clip(WaveField(rng, 8, (0.4, 1.0))(*unit), -2, 2)
    allowed = visceral & ~spine_zone
    organ = allowed & (radius < 1 + rng.uniform(0.05, 0.1) * bumps)
    # Lesions: centre voxel inside the organ, radius log-uniform over 3.3x (volume ~40x).
    weights, lesion = [], np.zeros(grid.shape, dtype=bool)
    for _ in range(num_lesions):
        r = max(ly, lx) * np.exp(rng.uniform(np.log(0.06), np.log(0.2)))
        lesion_axes = r * rng.uniform(0.75, 1.25, size=3)
        lesion_rot = _rotation(rng.uniform(0, np.pi), 0.0, 0.0)
        softness = rng.uniform(0.05, 0.25)
        index = point_in(rng, grid, organ, centre, rot, axes, (0.0, 0.8), 1.0)
        if index is None:
            continue
        point = grid.to_mm(index)
        lesion_local = _local(grid, point, lesion_rot)
        lesion_radius = _radius(lesion_local, lesion_axes)
        lumps = WaveField(rng, 4, (0.3, 0.8))(*(c / np.float32(r) for c in lesion_local))
        lesion_radius *= 1 + 0.08 * lumps
        inside = allowed & (radius < reach)
        mask = (lesion_radius < 1) & inside
        mask[index] = True
        lesion |= mask
        weights.append(np.clip((1 - lesion_radius) / softness + 0.5, 0, 1) * inside)
    label = np.zeros(grid.shape, dtype=np.uint8)
    label[organ] = 1
    label[lesion] = 2
    return PhantomAnatomy(
        body=body,
        fat_rim=body & (body_radius >= 1 - fat),
        visceral=visceral,
        visceral_fat=visceral_fat & ~organ,
        vertebra=vertebra,
        cortex=cortex,
        disc=disc,
        canal=canal,
        arch=arch,
        aorta=aorta,
        organ=organ,
        lesion_weights=weights,
        label=label,
        ellipse=(bcy, bcx, by, bx),
        taper=taper,
        wall_radius=1 - fat - wall,
        scaled=scaled,
        organ_frame=(centre, tuple(axes), rot),
    )


def point_in(
    rng: np.random.Generator,
    grid: PhantomGrid,
    mask: np.ndarray,
    centre: np.ndarray,
    rot: np.ndarray,
    axes,
    radii: tuple[float, float],
    z_squash: float,
) -> tuple[int, int, int] | None:
    """Voxel index of a random point of the ellipsoid shell ``radii`` that lies in ``mask``.

    Points are drawn in the ellipsoid's frame (z component scaled by ``z_squash``), at
    most 30 times; ``None`` if none falls in ``mask``.
    """
    for _ in range(30):
        direction = rng.standard_normal(3) * np.array([z_squash, 1.0, 1.0])
        direction /= np.linalg.norm(direction)
        point = centre + rot @ (rng.uniform(*radii) * direction * np.asarray(axes))
        index = grid.nearest_index(point)
        if mask[index]:
            return index  # type: ignore[return-value]
    return None
