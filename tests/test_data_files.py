"""Image loaders on tiny files written here in the real formats (idx, gzipped idx, CIFAR pickles)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from chrysalis.data import (
    CorruptDataError,
    DataNotFoundError,
    UnsafePickleError,
    clear_cache,
    get_dataset,
    images,
)
from chrysalis.data.download import download, verify_checksum
from chrysalis.data.images import parse_idx, read_idx
from chrysalis.data.safe_pickle import safe_load

IDX_NAMES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array in LeCun's idx format (big-endian, dtype code, ndim, sizes, values)."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B, np.dtype(np.float32): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def tiny_idx_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_x": rng.integers(0, 256, (40, 6, 7), dtype=np.uint8),
        "train_y": np.repeat(np.arange(10, dtype=np.uint8), 4),
        "test_x": rng.integers(0, 256, (20, 6, 7), dtype=np.uint8),
        "test_y": np.tile(np.arange(10, dtype=np.uint8), 2),
    }


def write_idx_set(folder: Path, arrays: dict[str, np.ndarray], gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_NAMES.items():
        data = idx_bytes(arrays[key])
        if gz:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)


def denormalize(ds) -> np.ndarray:
    """Back to raw 0..255 pixel values (rounded), using the dataset's recorded statistics."""
    norm = ds.normalization
    mean = torch.tensor(norm["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(norm["std"]).view(1, -1, 1, 1)
    return ((ds.inputs * std + mean) * norm["scale"]).round().to(torch.int64).numpy()


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


# ------------------------------------------------------------------------------------------ idx


@pytest.mark.parametrize("gz", [False, True])
def test_idx_set_loads_exact_pixels_and_labels(tmp_path, gz):
    arrays = tiny_idx_arrays()
    write_idx_set(tmp_path / "mnist", arrays, gz)
    train = get_dataset("mnist", "train", root=tmp_path, val_fraction=0.25)
    val = get_dataset("mnist", "val", root=tmp_path, val_fraction=0.25)
    test = get_dataset("mnist", "test", root=tmp_path, val_fraction=0.25)
    assert (len(train), len(val), len(test)) == (30, 10, 20)
    assert train.inputs.shape == (30, 1, 6, 7) and train.inputs.dtype == torch.float32
    assert train.info.input_shape == (1, 6, 7) and train.info.num_classes == 10
    # val is stratified: one of the four images of each class
    assert sorted(val.targets.tolist()) == list(range(10))
    # train and val partition the file's training part; test is the official test part, in order
    assert sorted(train.indices.tolist() + val.indices.tolist()) == list(range(40))
    assert test.indices.tolist() == list(range(20))
    for ds, xs, ys in ((train, "train_x", "train_y"), (test, "test_x", "test_y")):
        idx = ds.indices.numpy()
        np.testing.assert_array_equal(denormalize(ds)[:, 0], arrays[xs][idx])
        np.testing.assert_array_equal(ds.targets.numpy(), arrays[ys][idx])
    # normalised with train statistics: train has mean 0 and std 1, test need not
    assert abs(train.inputs.mean().item()) < 1e-5 and abs(train.inputs.std(unbiased=False).item() - 1) < 1e-4
    x, y = train[3]
    assert torch.equal(x, train.inputs[3]) and int(y) == int(train.targets[3])


def test_parse_idx_other_dtypes_and_shapes():
    a = np.arange(-6, 6, dtype=np.int16).reshape(3, 4)
    np.testing.assert_array_equal(parse_idx(idx_bytes(a)), a)
    f = np.linspace(0, 1, 5, dtype=np.float32)
    np.testing.assert_array_equal(parse_idx(idx_bytes(f)), f)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:-5], "truncated"),
        (lambda b: b + b"\x00", "trailing"),
        (lambda b: b[:6], "truncated"),
        (lambda b: b"\x01\x02" + b[2:], "magic"),
        (lambda b: b"", "magic"),
    ],
)
def test_corrupt_idx_raises(tmp_path, mutate, message):
    data = idx_bytes(np.zeros((3, 4, 4), dtype=np.uint8))
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(mutate(data))
    with pytest.raises(CorruptDataError, match=message):
        read_idx(path)


def test_truncated_gzip_idx_raises_through_get_dataset(tmp_path):
    arrays = tiny_idx_arrays()
    write_idx_set(tmp_path, arrays, gz=True)
    f = tmp_path / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-20])
    with pytest.raises(CorruptDataError, match="gzip"):
        get_dataset("mnist", "train", root=tmp_path)
    assert issubclass(CorruptDataError, ValueError)


def test_idx_label_count_mismatch_raises(tmp_path):
    arrays = tiny_idx_arrays()
    arrays["test_y"] = arrays["test_y"][:-1]
    write_idx_set(tmp_path, arrays, gz=False)
    with pytest.raises(CorruptDataError, match="20 test images but 19 labels"):
        get_dataset("mnist", "test", root=tmp_path)


def test_fashion_mnist_falls_back_to_system_dir(tmp_path, monkeypatch):
    system = tmp_path / "system"
    write_idx_set(system, tiny_idx_arrays(1), gz=True)
    monkeypatch.setattr(images, "FASHION_MNIST_SYSTEM_DIR", system)
    ds = get_dataset("fashion-mnist", "test", root=tmp_path / "empty")
    assert len(ds) == 20 and ds.info.class_names[0] == "T-shirt/top"


def test_missing_data_message_names_paths_package_and_flag(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(DataNotFoundError) as err:
        get_dataset("fashion-mnist", "train", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "fashion-mnist") in msg and str(tmp_path / "nowhere") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "download=True" in msg
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(DataNotFoundError, match="cifar-10-python.tar.gz"):
        get_dataset("cifar10", "train", root=tmp_path)


# ------------------------------------------------------------------------------------ downloads


def test_download_verifies_checksums(tmp_path):
    src = tmp_path / "payload.bin"
    src.write_bytes(b"chrysalis" * 100)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    verify_checksum(src, f"sha256:{sha}")
    verify_checksum(src, md5)
    out = download(src.as_uri(), tmp_path / "dl" / "ok.bin", f"md5:{md5}")
    assert out.read_bytes() == src.read_bytes()
    with pytest.raises(CorruptDataError, match="checksum mismatch"):
        download(src.as_uri(), tmp_path / "dl" / "bad.bin", "sha256:" + "0" * 64)
    # a failed download leaves nothing behind that a later run could trust
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["ok.bin"]


def test_get_dataset_download_flag_fetches_and_checks(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    write_idx_set(mirror, tiny_idx_arrays(2), gz=True)
    resources = {}
    for stem in IDX_NAMES.values():
        f = mirror / (stem + ".gz")
        resources[f.name] = (f.as_uri(), "md5:" + hashlib.md5(f.read_bytes()).hexdigest())
    monkeypatch.setitem(images.IDX_RESOURCES, "mnist", resources)
    root = tmp_path / "root"
    with pytest.raises(DataNotFoundError):
        get_dataset("mnist", "train", root=root)
    ds = get_dataset("mnist", "test", root=root, download=True)
    assert len(ds) == 20 and (root / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()
    # a tampered mirror is refused
    clear_cache()
    bad_root = tmp_path / "bad"
    name = "train-images-idx3-ubyte.gz"
    resources[name] = (resources[name][0], "md5:" + "f" * 32)
    with pytest.raises(CorruptDataError, match="checksum"):
        get_dataset("mnist", "train", root=bad_root, download=True)


# ---------------------------------------------------------------------------------------- CIFAR


def cifar_batch(rng, n: int, label_key: bytes, num_classes: int, extra: dict | None = None) -> bytes:
    batch = {
        b"batch_label": b"tiny batch",
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img%d.png" % i for i in range(n)],
    }
    batch.update(extra or {})
    return pickle.dumps(batch, protocol=2)


def write_cifar10(folder: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    members = {f"data_batch_{i}": cifar_batch(rng, 4, b"labels", 10) for i in range(1, 6)}
    members["test_batch"] = cifar_batch(rng, 6, b"labels", 10)
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    members["batches.meta"] = pickle.dumps({b"label_names": names, b"num_cases_per_batch": 4}, protocol=2)
    folder.mkdir(parents=True)
    for name, data in members.items():
        (folder / name).write_bytes(data)
    return members


def test_cifar10_folder_pixels_labels_and_layout(tmp_path):
    members = write_cifar10(tmp_path / "cifar-10-batches-py")
    train = get_dataset("cifar10", "train", root=tmp_path, val_fraction=0.0)
    test = get_dataset("cifar10", "test", root=tmp_path)
    assert train.inputs.shape == (20, 3, 32, 32) and len(test) == 6
    assert train.info.class_names[1] == "automobile" and train.info.num_classes == 10
    batches = [pickle.loads(members[f"data_batch_{i}"]) for i in range(1, 6)]
    data = np.concatenate([b[b"data"] for b in batches])
    labels = np.concatenate([b[b"labels"] for b in batches])
    raw = denormalize(train)
    # rows hold 1024 red, then green, then blue values, each row-major over 32x32
    np.testing.assert_array_equal(raw[:, 0].reshape(20, -1), data[:, :1024])
    np.testing.assert_array_equal(raw[:, 2, 5], data[:, 2048 + 5 * 32 : 2048 + 6 * 32])
    np.testing.assert_array_equal(train.targets.numpy(), labels)
    # per-channel normalisation
    assert torch.allclose(train.inputs.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)


def test_cifar10_tar_gz_equals_folder(tmp_path):
    members = write_cifar10(tmp_path / "extracted" / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    from_tar = get_dataset("cifar10", "train", root=tmp_path)
    from_dir = get_dataset("cifar10", "train", root=tmp_path / "extracted")
    assert torch.equal(from_tar.inputs, from_dir.inputs) and torch.equal(from_tar.targets, from_dir.targets)


def test_cifar100_fine_and_coarse(tmp_path):
    folder = tmp_path / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for member, n in (("train", 30), ("test", 10)):
        fine = rng.integers(0, 100, n)
        extra = {b"fine_labels": [int(v) for v in fine], b"coarse_labels": [int(v) // 5 for v in fine]}
        (folder / member).write_bytes(cifar_batch(rng, n, b"fine_labels", 100, extra))
    meta = {
        b"fine_label_names": [b"fine%d" % i for i in range(100)],
        b"coarse_label_names": [b"coarse%d" % i for i in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    fine = get_dataset("cifar100", "test", root=tmp_path)
    coarse = get_dataset("cifar100", "test", root=tmp_path, label_mode="coarse")
    assert fine.info.num_classes == 100 and coarse.info.num_classes == 20
    assert coarse.info.class_names[3] == "coarse3" and coarse.info.options["label_mode"] == "coarse"
    assert torch.equal(coarse.targets, fine.targets // 5)
    assert len(get_dataset("cifar100", "train", root=tmp_path)) == 27  # 30 minus a 10% val


class _Evil:
    """Unpickling this runs ``os.system`` under plain ``pickle.load``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle global (posix|os|nt)\.system"):
        safe_load(payload)
    members = write_cifar10(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(payload)
    with pytest.raises(UnsafePickleError, match="system"):
        get_dataset("cifar10", "train", root=tmp_path)
    assert not marker.exists()  # the command never ran
    assert issubclass(UnsafePickleError, ValueError)
    for name in ("eval", "exec", "getattr"):
        evil = b"\x80\x02cbuiltins\n" + name.encode() + b"\nq\x00."
        with pytest.raises(UnsafePickleError, match=f"builtins.{name}"):
            safe_load(evil)
    assert members  # the honest batches alone load fine through the same unpickler
    assert safe_load(members["test_batch"])[b"data"].shape == (6, 3072)


def test_corrupt_cifar_pickle_is_a_clear_error(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    f = tmp_path / "cifar-10-batches-py" / "test_batch"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(CorruptDataError, match="test_batch"):
        get_dataset("cifar10", "test", root=tmp_path)


# --------------------------------------------------------------------------------- registry errors


def test_unknown_name_split_and_option():
    with pytest.raises(ValueError, match="Did you mean 'mnist5k'") as err:
        get_dataset("mnist5", "train")
    assert "fashion-mnist" in str(err.value)  # lists the known names
    with pytest.raises(ValueError, match="split"):
        get_dataset("mnist5k", "validation")
    with pytest.raises(TypeError, match="permute_seed"):
        get_dataset("mnist5k", "train", permute_seed=1)  # only the permuted variants take it
    with pytest.raises(ValueError, match="rotation"):
        get_dataset("spherical-digits", "train", rotation="R/NRR")


def test_restricted_unpickler_reads_numpy1_spelling_of_arrays():
    # Real CIFAR archives were written by numpy 1.x, which names numpy.core.multiarray._reconstruct.
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    data = pickle.dumps({b"data": arr}, protocol=2)
    old = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert old != data or b"cnumpy.core.multiarray\n" in data
    np.testing.assert_array_equal(safe_load(old)[b"data"], arr)
    with pytest.raises(UnsafePickleError, match="codec"):
        safe_load(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R.")
