"""MNIST (t10k files) and sklearn digits as DatasetDicts: splits, columns, directory resolution, errors."""

import gzip
from pathlib import Path

import numpy as np
import pytest

import hf_dynamic
from hf_dynamic.data.mnist import MNIST_DIR_ENV, MNIST_FILES, load_mnist, resolve_mnist_dir

SHARED_MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(not (SHARED_MNIST / MNIST_FILES["images"]).is_file(), reason="no shared MNIST")


@needs_mnist
def test_load_mnist_splits_the_t10k_set_8000_2000_by_index():
    mnist = hf_dynamic.load_mnist()
    assert {k: v.num_rows for k, v in mnist.items()} == {"train": 8000, "test": 2000}
    assert mnist["train"].column_names == ["image", "label"]
    assert mnist["train"].features["label"].names == [str(d) for d in range(10)]
    test = mnist["test"].with_format("numpy")[:3]
    assert test["image"].shape == (3, 28, 28) and 0 <= test["image"].min() and test["image"].max() <= 255
    assert mnist["train"].features["image"].dtype == "uint8"  # stored as uint8 (the numpy format widens to int64)
    # rows 4, 9, 14 of the t10k set (labels 7,2,1,0,[4],1,4,9,5,[9],0,6,9,0,[1],...) are the first test rows
    assert test["label"].tolist() == [4, 9, 1]
    assert mnist["train"].with_format("numpy")[:4]["label"].tolist() == [7, 2, 1, 0]
    counts = np.bincount(np.asarray(mnist["train"]["label"]), minlength=10) + np.bincount(
        np.asarray(mnist["test"]["label"]), minlength=10)
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@needs_mnist
def test_directory_resolution_argument_then_environment(tmp_path, monkeypatch):
    assert resolve_mnist_dir(SHARED_MNIST) == SHARED_MNIST
    monkeypatch.setenv(MNIST_DIR_ENV, str(SHARED_MNIST))
    assert resolve_mnist_dir() == SHARED_MNIST
    monkeypatch.setenv(MNIST_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"nowhere.*\$HF_DYNAMIC_MNIST_DIR.*does not exist"):
        load_mnist()


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"\(from data_dir\) lacks t10k-images-idx3-ubyte.gz, t10k-labels"):
        load_mnist(tmp_path)


def write_idx(path, magic, dims, payload):
    header = np.array([magic, *dims], dtype=">u4").tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(header + payload)


@pytest.fixture
def fake_mnist(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, 7840, dtype=np.uint8).tobytes()
    write_idx(tmp_path / MNIST_FILES["images"], 2051, (10, 28, 28), pixels)
    write_idx(tmp_path / MNIST_FILES["labels"], 2049, (10,), np.arange(10, dtype=np.uint8).tobytes())
    return tmp_path


def test_a_small_valid_folder_loads_with_the_same_split_rule(fake_mnist):
    mnist = load_mnist(fake_mnist)
    assert mnist["train"]["label"] == [0, 1, 2, 3, 5, 6, 7, 8] and mnist["test"]["label"] == [4, 9]


def test_corrupt_files_raise_value_errors_naming_the_file(fake_mnist):
    images = fake_mnist / MNIST_FILES["images"]
    raw = gzip.open(images).read()
    images.write_bytes(gzip.compress(raw)[:100])  # truncated gzip
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz' is corrupt \(not a complete gzip file"):
        load_mnist(fake_mnist)
    write_idx(images, 2049, (10, 28, 28), raw[16:])
    with pytest.raises(ValueError, match=r"is corrupt: magic number 2049, expected 2051"):
        load_mnist(fake_mnist)
    write_idx(images, 2051, (10, 28, 28), raw[16:-5])
    with pytest.raises(ValueError, match=r"header says \(10, 28, 28\) \(7840 bytes of data\), file holds 7835"):
        load_mnist(fake_mnist)
    write_idx(images, 2051, (9, 28, 28), raw[16 : 16 + 9 * 784])
    with pytest.raises(ValueError, match=r"disagree: images \(9, 28, 28\), labels \(10,\)"):
        load_mnist(fake_mnist)


def test_sklearn_digits_has_the_same_shape_of_dataset_dict():
    digits = hf_dynamic.load_sklearn_digits()
    assert {k: v.num_rows for k, v in digits.items()} == {"train": 1438, "test": 359}
    assert digits["train"].column_names == ["image", "label"]
    row = digits["test"].with_format("numpy")[0]
    assert row["image"].shape == (8, 8) and row["image"].max() <= 16


