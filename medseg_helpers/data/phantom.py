"""Drawing one synthetic phantom: anatomy in millimetres, then MR or CT intensities.

`make_phantom` is the only public function; `synthetic` calls it for each case of a
dataset and owns seeding, geometry and files. The anatomy (body, fat, spine, aorta, an
organ and 0-3 lesions) is drawn on voxel-centre coordinates in mm, so the same random
draws give the same anatomy at any shape; voxel noise is drawn last.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

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
    grid = _Grid.build(shape, spacing)  # type: ignore[arg-type]
    anatomy = _draw_anatomy(rng, grid, num_lesions)
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


@dataclass(frozen=True)
class _Grid:
    """Voxel-centre coordinates in mm from the volume centre, as open (broadcast) grids."""

    z: np.ndarray  # (Z, 1, 1) float32
    y: np.ndarray  # (1, Y, 1)
    x: np.ndarray  # (1, 1, X)
    half: tuple[float, float, float]  # half field of view (Lz, Ly, Lx), mm
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @classmethod
    def build(cls, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> _Grid:
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


class _WaveField:
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


def _local(grid: _Grid, centre, rot: np.ndarray) -> tuple[np.ndarray, ...]:
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


def _disc(grid: _Grid, y0: float, x0: float, radius: float) -> np.ndarray:
    """(1, Y, X) in-plane distance from (y0, x0) divided by ``radius``."""
    return np.sqrt((grid.y - y0) ** 2 + (grid.x - x0) ** 2) / np.float32(radius)


@dataclass
class _Anatomy:
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


def _draw_anatomy(rng: np.random.Generator, grid: _Grid, num_lesions: int) -> _Anatomy:
    lz, ly, lx = grid.half
    scaled = grid.scaled()
    # Body: an elliptic cylinder with a wobbly outline, slightly tapering along z.
    by, bx = rng.uniform(0.55, 0.68) * ly, rng.uniform(0.78, 0.9) * lx
    bcy, bcx = rng.uniform(-0.04, 0.04) * ly, rng.uniform(-0.04, 0.04) * lx
    taper = 1 + rng.uniform(-0.06, 0.06) * grid.z / np.float32(lz)
    outline = 1 + 0.025 * _WaveField(rng, 6, (0.3, 1.2))(*scaled)
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
    visceral_fat = visceral & (_WaveField(rng, 10, (1.5, 4.0))(*scaled) > rng.uniform(0.7, 1.3))
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
    bumps = np.clip(_WaveField(rng, 8, (0.4, 1.0))(*unit), -2, 2)
    allowed = visceral & ~spine_zone
    organ = allowed & (radius < 1 + rng.uniform(0.05, 0.1) * bumps)
    # Lesions: centre voxel inside the organ, radius log-uniform over 3.3x (volume ~40x).
    weights, lesion = [], np.zeros(grid.shape, dtype=bool)
    for _ in range(num_lesions):
        r = max(ly, lx) * np.exp(rng.uniform(np.log(0.06), np.log(0.2)))
        lesion_axes = r * rng.uniform(0.75, 1.25, size=3)
        lesion_rot = _rotation(rng.uniform(0, np.pi), 0.0, 0.0)
        softness = rng.uniform(0.05, 0.25)
        index = _point_in(rng, grid, organ, centre, rot, axes, (0.0, 0.8), 1.0)
        if index is None:
            continue
        point = grid.to_mm(index)
        lesion_local = _local(grid, point, lesion_rot)
        lesion_radius = _radius(lesion_local, lesion_axes)
        lumps = _WaveField(rng, 4, (0.3, 0.8))(*(c / np.float32(r) for c in lesion_local))
        lesion_radius *= 1 + 0.08 * lumps
        inside = allowed & (radius < reach)
        mask = (lesion_radius < 1) & inside
        mask[index] = True
        lesion |= mask
        weights.append(np.clip((1 - lesion_radius) / softness + 0.5, 0, 1) * inside)
    label = np.zeros(grid.shape, dtype=np.uint8)
    label[organ] = 1
    label[lesion] = 2
    return _Anatomy(
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


def _paint(image: np.ndarray, mask: np.ndarray, value) -> None:
    """``image[mask] = value`` where ``mask`` and ``value`` broadcast to ``image``."""
    np.copyto(image, value, where=mask)


def _render_mr(rng: np.random.Generator, grid: _Grid, a: _Anatomy) -> np.ndarray:
    """T1-like contrast, partial-volume blur, bias field, Rician noise; float32."""
    tissue = rng.uniform(200, 260)  # muscle-like; organ brighter, fat brightest (T1)
    organ_value = tissue * rng.uniform(1.6, 1.9)
    texture = 1 + 0.05 * _WaveField(rng, 10, (3.0, 8.0))(*a.scaled)
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
    bias_field = np.clip(_WaveField(rng, 4, (0.15, 0.5))(*a.scaled), -2, 2)
    bias = np.exp(rng.uniform(0.08, 0.16) * bias_field)  # within x0.73-x1.38
    gain = rng.uniform(0.9, 1.1)
    sigma = rng.uniform(0.02, 0.045) * organ_value * gain
    image = image * bias * gain
    real = image + sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    return np.sqrt(real**2 + imaginary**2).astype(np.float32)


def _render_ct(rng: np.random.Generator, grid: _Grid, a: _Anatomy) -> np.ndarray:
    """Hounsfield units with bone, table, gas, optional metal; int16."""
    hu = np.full(grid.shape, -1000.0, dtype=np.float32)
    # Patient table, curved, below (posterior to) the body.
    lz, ly, lx = grid.half
    top = np.max(np.where(a.body, grid.y, -ly)) + rng.uniform(8, 20)
    curve = top - 15.0 * (grid.x / np.float32(lx)) ** 2
    _paint(hu, (grid.y > curve) & (grid.y < curve + rng.uniform(6, 12)), rng.uniform(-50, 150))
    texture = _WaveField(rng, 10, (3.0, 8.0))(*a.scaled)
    _paint(hu, a.body, rng.uniform(35, 45) + 6 * texture)
    _paint(hu, a.fat_rim | a.visceral_fat, rng.uniform(-110, -90) + 8 * texture)
    gas = a.visceral & ~a.organ & (_WaveField(rng, 8, (2.0, 5.0))(*a.scaled) > 2.2)
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


def _point_in(
    rng: np.random.Generator,
    grid: _Grid,
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


def _add_metal(rng: np.random.Generator, grid: _Grid, a: _Anatomy, hu: np.ndarray) -> None:
    """A ~3000 HU clip just outside the organ, with radial streaks through its slices."""
    centre, axes, rot = a.organ_frame
    index = _point_in(rng, grid, a.visceral & (a.label == 0), centre, rot, axes, (1.1, 1.4), 0.3)
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
