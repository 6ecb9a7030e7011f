"""Whole-dataset image transforms: padding and the fixed permutations behind ``permuted-`` and
``shuffled-`` variants. Each works on a batch tensor ``(N, C, H, W)`` of any dtype at once."""

from __future__ import annotations

import torch


def pad_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad ``(N, C, H, W)`` images to ``size x size``, centred (an odd excess goes to the
    bottom/right), e.g. MNIST's 28x28 to the 32x32 that LeNet expects."""
    h, w = images.shape[-2:]
    if size < h or size < w:
        raise ValueError(f"pad_to={size} is smaller than the images ({h}x{w})")
    top, left = (size - h) // 2, (size - w) // 2
    return torch.nn.functional.pad(images, (left, size - w - left, top, size - h - top))


def axis_permutations(height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed random permutation of the rows and an independent one of the columns.

    Both come from one ``torch.Generator`` seeded with ``seed`` (rows drawn first), so they depend
    only on the seed and the image size - the same for every split.
    """
    g = torch.Generator().manual_seed(seed)
    rows = torch.randperm(height, generator=g)
    cols = torch.randperm(width, generator=g)
    return rows, cols


def permute_axes(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``out[..., i, j] = images[..., rows[i], cols[j]]``."""
    return images[..., rows, :][..., cols]


def unpermute_axes(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`permute_axes` with the same ``rows`` and ``cols``."""
    return permute_axes(images, torch.argsort(rows), torch.argsort(cols))


def pixel_permutation(height: int, width: int, seed: int) -> torch.Tensor:
    """One fixed random permutation of all ``height * width`` pixel positions (a full shuffle,
    which unlike :func:`axis_permutations` does not factor over the axes)."""
    return torch.randperm(height * width, generator=torch.Generator().manual_seed(seed))


def shuffle_pixels(images: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``out.flatten(-2)[..., i] = images.flatten(-2)[..., perm[i]]``, same permutation per channel."""
    shape = images.shape
    return images.flatten(-2)[..., perm].reshape(shape)


def unshuffle_pixels(images: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`shuffle_pixels`."""
    return shuffle_pixels(images, torch.argsort(perm))
