"""Datasets: shapes, ranges, the fixed split, tfds (mocked, never downloading), IDX/NPZ files, bad data."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from bench import data
from bench.errors import BenchError


def _check_images(d: data.Dataset, shape):
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        assert x.dtype == np.float32 and x.shape[1:] == shape
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert y.dtype == np.int32 and len(y) == len(x)


def test_digits_kept_at_8x8(digits_data):
    _check_images(digits_data, (8, 8, 1))
    assert len(digits_data.y_train) + len(digits_data.y_test) == 1797
    assert digits_data.num_classes == 10


def test_mnist5k_fixed_stratified_split():
    d = data.mnist5k()
    _check_images(d, (28, 28, 1))
    assert (len(d.y_train), len(d.y_test)) == (4000, 1000)
    assert np.all(np.bincount(d.y_test) == 100) and np.all(np.bincount(d.y_train) == 400)
    assert data.mnist5k().fingerprint == d.fingerprint  # the split is fixed
    small = data.mnist5k(n_train=100, n_test=50)
    assert (len(small.y_train), len(small.y_test)) == (100, 50) and small.fingerprint != d.fingerprint


def test_stored_splits_are_scikit_learns_and_digits_are_load_digits():
    """The offline datasets read their split from bench/splits.npz, not from scikit-learn: it must be exactly
    scikit-learn's stratified split, and the digits read from its CSV exactly `load_digits`."""
    from sklearn.datasets import load_digits

    x, y = data._digits_raw()
    bunch = load_digits()
    np.testing.assert_array_equal(x[..., 0], (bunch.images / 16.0).astype(np.float32))
    np.testing.assert_array_equal(y, bunch.target)
    with np.load(data.SPLITS_FILE) as saved:
        for name, raw in (("digits", data._digits_raw), ("mnist5k", data._mnist5k_raw)):
            train, test = data.split_indices(raw()[1], data._TEST_SIZE[name])
            np.testing.assert_array_equal(saved[f"{name}_train"], train)
            np.testing.assert_array_equal(saved[f"{name}_test"], test)


def test_fingerprint_sees_every_byte():
    a = np.zeros((2, 3), np.float32)
    b = a.copy()
    b[1, 2] = 1e-7
    assert data.fingerprint(a) != data.fingerprint(b)
    assert data.fingerprint(a) != data.fingerprint(a.reshape(3, 2))


def test_tfds_path_on_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=24):
        d = data.tfds("mnist", n_test=10)
    _check_images(d, (28, 28, 1))
    assert (len(d.y_train), len(d.y_test)) == (24, 10)
    assert d.num_classes == 10 and d.name == "mnist"


def test_tfds_not_prepared_is_a_clear_error(tmp_path):
    with pytest.raises(BenchError) as err:
        data.tfds("mnist", data_dir=str(tmp_path))
    message = str(err.value)
    assert "digits" in message and "mnist5k" in message and "data_dir" in message
    assert "\n" not in message


def _write_idx(path, array, gz=False):
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


@pytest.fixture
def tiny_arrays():
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (20, 6, 6), dtype=np.uint8),
        "y_train": rng.integers(0, 3, 20).astype(np.uint8),
        "x_test": rng.integers(0, 256, (8, 6, 6), dtype=np.uint8),
        "y_test": rng.integers(0, 3, 8).astype(np.uint8),
    }


def test_idx_folder(tmp_path, tiny_arrays):
    for key, stem in data._IDX_NAMES.items():
        _write_idx(tmp_path / (stem + (".gz" if key.startswith("x") else "")), tiny_arrays[key],
                   gz=key.startswith("x"))
    d = data.files(str(tmp_path), name="tiny")
    _check_images(d, (6, 6, 1))
    np.testing.assert_allclose(d.x_train[..., 0], tiny_arrays["x_train"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(d.y_test, tiny_arrays["y_test"])


def test_npz_file(tmp_path, tiny_arrays):
    path = tmp_path / "tiny.npz"
    np.savez(path, **tiny_arrays)
    d = data.files(str(path))
    assert d.name == "tiny"
    np.testing.assert_array_equal(d.y_train, tiny_arrays["y_train"])


def test_truncated_idx_is_a_clear_error(tmp_path, tiny_arrays):
    path = tmp_path / "x"
    _write_idx(path, tiny_arrays["x_train"])
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(BenchError, match="truncated"):
        data.read_idx(path)


@pytest.mark.parametrize("bad,message", [(np.nan, "NaN"), (2.0, r"not \[0, 1\]")])
def test_bad_pixels_are_clear_errors(tmp_path, tiny_arrays, bad, message):
    arrays = {k: v.astype(np.float32) / (255.0 if k.startswith("x") else 1.0) for k, v in tiny_arrays.items()}
    arrays["x_train"][0, 0, 0] = bad
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(BenchError, match=message):
        data.files(str(tmp_path / "bad.npz"))


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(BenchError, match="neither"):
        data.files(str(tmp_path / "nothing"))
