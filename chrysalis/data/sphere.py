"""Planar images on the sphere: the equiangular grid, random rotations, projection and resampling.

Conventions
-----------
* **Grid.** An equiangular (Driscoll-Healy) grid of ``grid = 2b`` by ``2b`` points for bandwidth
  ``b``: colatitude ``beta_j = pi (2j + 1) / (4b)`` (rows, j = 0..2b-1, north to south) and
  longitude ``alpha_k = 2 pi k / (2b)`` (columns, k = 0..2b-1), as in Cohen et al. (2018).
  A grid point is ``p = (sin b cos a, sin b sin a, cos b)`` on the unit sphere.
* **Projection.** Stereographic projection from the south pole onto the equatorial plane,
  ``(u, v) = (x, y) / (1 + z)``. The image fills the square ``[-extent, extent]^2`` of that plane,
  its columns running along ``+u`` and its rows along ``-v`` (the top row towards ``+y``). With
  ``extent = 1`` the image's inscribed disc is exactly the northern hemisphere and its corners
  reach colatitude ``2 atan(sqrt 2) ~ 109.5 deg``. Stereographic projection is conformal, so
  digits keep their local shape; the value at a grid point is the bilinear interpolation of the
  image there (``torch.nn.functional.grid_sample``), zero outside the image.
* **Rotation.** A rotated signal is ``f_R(p) = f(R^T p)``: the image is sampled at ``R^T p``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def grid_angles(grid: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """``(beta, alpha)``, each of length ``grid``, of the equiangular grid (``grid`` even)."""
    if grid < 2 or grid % 2:
        raise ValueError(f"grid must be an even integer >= 2, got {grid}")
    b = grid // 2
    j = torch.arange(grid, dtype=dtype)
    beta = math.pi * (2 * j + 1) / (4 * b)
    alpha = 2 * math.pi * j / (2 * b)
    return beta, alpha


def grid_points(grid: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Unit vectors of the grid, shape ``(grid, grid, 3)`` indexed ``[beta_j, alpha_k]``."""
    beta, alpha = grid_angles(grid, dtype)
    b, a = torch.meshgrid(beta, alpha, indexing="ij")
    return torch.stack((b.sin() * a.cos(), b.sin() * a.sin(), b.cos()), dim=-1)


def rotation_from_quaternion(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` from quaternions ``(..., 4)`` = (w, x, y, z), normalised first."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def random_rotations(
    n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """``n`` rotation matrices drawn uniformly (Haar measure) from SO(3), shape ``(n, 3, 3)``.

    A standard normal 4-vector has a rotation-invariant direction, so normalising it gives a
    uniform unit quaternion, and unit quaternions cover SO(3) uniformly (twice).
    """
    q = torch.randn(n, 4, generator=generator, dtype=dtype)
    return rotation_from_quaternion(q)


def rotation_z(angle: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Rotation by ``angle`` radians about the z axis (the north pole), shape ``(3, 3)``."""
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=dtype)


def stereographic(points: torch.Tensor) -> torch.Tensor:
    """Plane coordinates ``(..., 2)`` = (u, v) of unit vectors ``(..., 3)``, projected from the south
    pole. The south pole itself maps to a huge (but finite) value, i.e. off any image."""
    x, y, z = points.unbind(-1)
    denom = (1 + z).clamp_min(1e-9)
    return torch.stack((x / denom, y / denom), dim=-1)


def plane_coords(points: torch.Tensor, extent: float = 1.0) -> torch.Tensor:
    """``grid_sample`` coordinates ``(..., 2)`` of sphere points: (column, row) in [-1, 1] on the
    image, rows running along ``-v`` (see the module docs); outside [-1, 1] is off the image."""
    # Same as stereographic(points) / extent with v negated, written to avoid temporaries: this
    # runs on (N, G, G, 3) tensors when every image has its own rotation.
    coords = points[..., :2] / ((1 + points[..., 2:]).clamp_min(1e-9) * extent)
    coords[..., 1].neg_()
    return coords


def _sample_plane(images: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    coords = coords.to(images.dtype).expand(images.shape[0], *coords.shape[-3:])
    return F.grid_sample(images, coords, mode="bilinear", padding_mode="zeros", align_corners=False)


def project(
    images: torch.Tensor,
    grid: int = 60,
    rotations: torch.Tensor | None = None,
    extent: float = 1.0,
    chunk: int = 1024,
) -> torch.Tensor:
    """Project planar images ``(N, C, H, W)`` onto the ``grid x grid`` sphere grid.

    ``rotations`` (``(N, 3, 3)`` or None): image ``i`` is rotated by ``rotations[i]`` on the
    sphere, i.e. sampled at ``R_i^T p``. Works on ``chunk`` images at a time, vectorised within a
    chunk, so memory stays bounded (a chunk of rotated grids is ``chunk * grid^2 * 3`` floats).
    Returns ``(N, C, grid, grid)`` in ``images.dtype``.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if rotations is not None and rotations.shape != (images.shape[0], 3, 3):
        raise ValueError(f"rotations must be ({images.shape[0]}, 3, 3), got {tuple(rotations.shape)}")
    points = grid_points(grid)
    fixed = plane_coords(points, extent)  # shared by every unrotated image
    out = images.new_empty(images.shape[0], images.shape[1], grid, grid)
    for start in range(0, images.shape[0], chunk):
        block = images[start : start + chunk]
        if rotations is None:
            coords = fixed
        else:
            # (R^T p)_j = sum_k R_kj p_k for every grid point and every image of the chunk. In
            # float32: its ~1e-7 error is far below a pixel, and float64 would double the time.
            r = rotations[start : start + chunk].to(torch.float32)
            coords = plane_coords(torch.einsum("gak,nkj->ngaj", points.float(), r), extent)
        out[start : start + chunk] = _sample_plane(block, coords)
    return out


def sample_sphere(signal: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear interpolation of grid signals ``(N, C, G, G)`` at unit vectors ``(N, ..., 3)``.

    Longitude wraps around; colatitude is clamped to the first/last ring near the poles (the grid
    has no samples closer to them). Returns ``(N, C, ...)``. Used to resample a projected signal,
    e.g. to check that projecting a rotated image equals rotating the projected one.
    """
    n, c, g, g2 = signal.shape
    if g != g2:
        raise ValueError("signal must be on a square (grid x grid) equiangular grid")
    b = g // 2
    lead = points.shape[1:-1]
    pts = points.reshape(n, 1, -1, 3).to(torch.float64)
    beta = pts[..., 2].clamp(-1, 1).acos()
    alpha = torch.atan2(pts[..., 1], pts[..., 0]) % (2 * math.pi)
    j = 2 * b * beta / math.pi - 0.5  # fractional row: inverts beta_j = pi (2j + 1) / (4b)
    k = b * alpha / math.pi + 1  # fractional column in the wrapped signal below
    wrapped = torch.cat((signal[..., -1:], signal, signal[..., :1]), dim=-1)  # width g + 2
    coords = torch.stack((2 * k / (g + 1) - 1, 2 * j / (g - 1) - 1), dim=-1).to(signal.dtype)
    out = F.grid_sample(wrapped, coords, mode="bilinear", padding_mode="border", align_corners=True)
    return out.reshape(n, c, *lead)
