"""Geometry of the spherical projection and the ``spherical-*`` datasets."""

from __future__ import annotations

import math

import pytest
import torch

from chrysalis.data import get_dataset, pipeline, sphere
from chrysalis.data.images import load_mnist5k

H = 28


def blobs() -> torch.Tensor:
    """Smooth test images (Gaussian blobs, sigma >= 4 px, peak 1), shape (3, 1, 28, 28)."""
    yy, xx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(H) + 0.5, indexing="ij")

    def blob(cx: float, cy: float, s: float) -> torch.Tensor:
        return torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))

    return torch.stack([blob(14, 14, 5), blob(9, 18, 4), blob(20, 8, 6)])[:, None].float()


def test_grid_angles_and_points_on_unit_sphere():
    beta, alpha = sphere.grid_angles(60)
    b = 30
    assert beta[0].item() == pytest.approx(math.pi / (4 * b)) and beta[-1].item() == pytest.approx(
        math.pi - math.pi / (4 * b)
    )
    assert alpha[1].item() == pytest.approx(math.pi / b) and alpha[-1].item() < 2 * math.pi
    p = sphere.grid_points(60)
    assert p.shape == (60, 60, 3)
    torch.testing.assert_close(p.norm(dim=-1), torch.ones(60, 60, dtype=torch.float64))
    # row j has colatitude beta_j: z = cos(beta_j) along the whole row
    torch.testing.assert_close(p[..., 2], beta.cos()[:, None].expand(60, 60))
    with pytest.raises(ValueError):
        sphere.grid_angles(59)


def test_random_rotations_are_proper_and_uniform():
    g = torch.Generator().manual_seed(0)
    r = sphere.random_rotations(4000, generator=g)
    eye = torch.eye(3, dtype=torch.float64).expand(4000, 3, 3)
    torch.testing.assert_close(r @ r.transpose(1, 2), eye)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(4000, dtype=torch.float64))
    # Haar measure: E[R] = 0 and E[trace R] = 0 (std of each entry's mean is ~ 1/sqrt(3 * 4000))
    assert r.mean(0).abs().max().item() < 0.05
    # deterministic given the generator seed
    again = sphere.random_rotations(4000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(r, again)


def test_constant_image_stays_constant_where_covered():
    grid = 60
    out = sphere.project(torch.ones(1, 1, H, H), grid)[0, 0].double()
    coords = sphere.plane_coords(sphere.grid_points(grid))
    inside = (coords.abs() <= 1 - 1 / H).all(-1)  # within the hull of pixel centres
    # bilinear sampling fades to the zero padding over the half pixel beyond the edge pixels'
    # centres; beyond the centres of the (virtual) padding pixels everything is 0
    outside = (coords.abs() >= 1 + 1 / H).any(-1)
    assert inside.sum() > 1000 and outside.sum() > 500
    torch.testing.assert_close(out[inside], torch.ones(int(inside.sum()), dtype=torch.float64))
    assert out[outside].abs().max().item() == 0.0
    # with extent=1 the image's inscribed disc is the northern hemisphere: all of it is covered
    north = sphere.grid_points(grid)[..., 2] > 0
    assert (out[north] > 0).all()


def test_orientation_top_of_image_is_plus_y():
    img = torch.zeros(1, 1, H, H)
    img[..., : H // 2, :] = 1.0  # top half bright
    out = sphere.project(img, 60)[0, 0].double()
    p = sphere.grid_points(60)
    assert (out * p[..., 1]).sum() > 0 and abs(
        (out * p[..., 0]).sum().item()
    ) < 1e-6 * out.sum().item() + 1e-3


def test_rotation_about_pole_by_grid_step_is_a_roll_exactly():
    grid, m = 60, 7
    img = blobs()
    r = sphere.rotation_z(2 * math.pi * m / grid).expand(3, 3, 3)
    rotated = sphere.project(img, grid, r)
    plain = sphere.project(img, grid)
    # f_R(beta, alpha) = f(beta, alpha - theta): a shift by m columns
    torch.testing.assert_close(rotated, plain.roll(m, dims=-1), atol=1e-5, rtol=0)


def test_projection_commutes_with_rotation_up_to_interpolation():
    """project(image, R) against project(image) resampled at R^T p.

    Both paths interpolate bilinearly; the coarsest sphere sampling of the image (at its corners,
    which stereographic projection sends below the equator) is ~2.1 px, so for blobs of
    sigma >= 4 px each interpolation errs by at most ~h^2/(8 sigma^2) * 2 ~ 0.07 of the peak.
    Two interpolations: tolerance 0.15 on the max error (peak 1) and 0.005 on the mean. A wrong
    rotation must fail the same comparison by far.
    """
    grid = 60
    img = blobs()
    g = torch.Generator().manual_seed(1)
    r = sphere.random_rotations(3, generator=g)
    direct = sphere.project(img, grid, r)
    plain = sphere.project(img, grid)
    points = sphere.grid_points(grid)
    resampled = sphere.sample_sphere(plain, torch.einsum("gak,nkj->ngaj", points, r))
    err = (direct - resampled).abs()
    assert err.max().item() < 0.15 and err.mean().item() < 0.005
    wrong = sphere.sample_sphere(plain, torch.einsum("gak,nkj->ngaj", points, r.transpose(1, 2)))
    assert (direct - wrong).abs().max().item() > 0.5


def test_projection_of_a_batch_is_the_projection_of_each_image():
    """Chunked, vectorised projection (speed is measured in docs/DATA.md, not asserted here)."""
    x = torch.rand(300, 1, H, H)
    rotations = sphere.random_rotations(300, generator=torch.Generator().manual_seed(0))
    out = sphere.project(x, 60, rotations)
    assert out.shape == (300, 1, 60, 60)
    for i in (0, 137, 299):
        assert torch.allclose(out[i : i + 1], sphere.project(x[i : i + 1], 60, rotations[i : i + 1]), atol=1e-4)


@pytest.mark.parametrize("rotation", ["NR/NR", "NR/R", "R/R"])
def test_spherical_mnist5k_rotations(rotation):
    opts = {"rotation": rotation, "limit": 120, "grid": 20}
    train = get_dataset("spherical-mnist5k", "train", **opts)
    test = get_dataset("spherical-mnist5k", "test", **opts)
    assert train.inputs.shape == (120, 1, 20, 20) and train.info.input_shape == (1, 20, 20)
    assert train.info.options["rotation"] == rotation and "pad_to" not in train.info.options
    raw = load_mnist5k()
    norm = train.normalization
    for ds, rotated in ((train, rotation == "R/R"), (test, rotation != "NR/NR")):
        planar = torch.from_numpy(raw.train_x[ds.indices.numpy()]).float() / 255
        rot = None
        if rotated:
            # the rotation of an item depends only on rotation_seed and its index in the file
            rot = sphere.random_rotations(5000, generator=torch.Generator().manual_seed(0))[ds.indices]
        expected = (sphere.project(planar, 20, rot) - norm["mean"][0]) / norm["std"][0]
        torch.testing.assert_close(ds.inputs, expected, atol=1e-5, rtol=0)
    # deterministic across calls and independent of the limit chosen for the other splits
    again = get_dataset("spherical-mnist5k", "test", rotation=rotation, limit=120, grid=20, pad_to=32)
    assert torch.equal(again.inputs, test.inputs)


def test_train_rotations_add_independently_rotated_copies_of_the_training_images():
    opts = {"rotation": "R/R", "limit": 60, "grid": 12}
    one = {s: get_dataset("spherical-mnist5k", s, **opts) for s in ("train", "val", "test")}
    three = {s: get_dataset("spherical-mnist5k", s, train_rotations=3, **opts) for s in ("train", "val", "test")}
    n = len(one["train"])
    assert three["train"].inputs.shape == (3 * n, 1, 12, 12)
    assert torch.equal(three["train"].targets, one["train"].targets.repeat(3))
    assert torch.equal(three["train"].indices, one["train"].indices.repeat(3))

    def planar_units(ds):  # undo each dataset's own normalisation (the statistics differ)
        return ds.inputs * ds.normalization["std"][0] + ds.normalization["mean"][0]

    first = planar_units(three["train"])
    torch.testing.assert_close(first[:n], planar_units(one["train"]), atol=1e-5, rtol=0)  # copy 0 = the set
    # copies 1, 2: the same digits under other rotations, each equal to an explicit projection
    raw = load_mnist5k()
    planar = torch.from_numpy(raw.train_x[one["train"].indices.numpy()]).float() / 255
    for copy in (1, 2):
        block = first[copy * n:(copy + 1) * n]
        assert (block - first[:n]).abs().amax(dim=(1, 2, 3)).min() > 0.1  # every image moved
        rot = pipeline._rotations(0, 0, copy, 5000)[one["train"].indices]
        torch.testing.assert_close(block, sphere.project(planar, 12, rot), atol=1e-5, rtol=0)
    assert not torch.allclose(first[n:2 * n], first[2 * n:])
    for split in ("val", "test"):  # only the training split is augmented
        torch.testing.assert_close(planar_units(three[split]), planar_units(one[split]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("rotation,copies", [("NR/R", 2), ("NR/NR", 3), ("R/R", 0), ("R/R", 1.5)])
def test_train_rotations_bad_values_are_refused(rotation, copies):
    with pytest.raises(ValueError, match="train_rotations"):
        get_dataset("spherical-mnist5k", "train", rotation=rotation, train_rotations=copies, grid=12, limit=20)
