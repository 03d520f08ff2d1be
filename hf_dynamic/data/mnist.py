"""Digit images as ``datasets.DatasetDict``: MNIST (from its official idx files) and scikit-learn's digits.

Both loaders return ``train`` / ``test`` splits with the columns ``image`` (``Array2D`` of ``uint8``, no decoding
needed) and ``label`` (``ClassLabel`` "0".."9"), and split deterministically without a random generator: row ``i``
of the source goes to ``test`` when ``i % 5 == 4``, else to ``train`` (every fifth image; both halves of the MNIST
test set, which come from different writer populations, are spread evenly over the two splits).

- :func:`load_mnist` reads the 10,000-image MNIST *test* set (``t10k-images-idx3-ubyte.gz``,
  ``t10k-labels-idx1-ubyte.gz``; the 60,000-image training images are not used), giving 8,000 train / 2,000 test
  28×28 images, pixels 0..255. Folder: ``data_dir``, else ``$HF_DYNAMIC_MNIST_DIR``, else ``../shared/data/mnist``
  next to the repository root (or the current directory).
- :func:`load_sklearn_digits` reads ``sklearn.datasets.load_digits`` (1,797 8×8 images, pixels 0..16, bundled with
  scikit-learn): 1,438 train / 359 test.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

MNIST_DIR_ENV = "HF_DYNAMIC_MNIST_DIR"
MNIST_FILES = {"images": "t10k-images-idx3-ubyte.gz", "labels": "t10k-labels-idx1-ubyte.gz"}
IDX_MAGIC = {"images": 2051, "labels": 2049}
TEST_EVERY = 5  # row i is a test row when i % TEST_EVERY == TEST_EVERY - 1
_REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_mnist_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the two MNIST t10k files: ``data_dir``, ``$HF_DYNAMIC_MNIST_DIR`` or the shared default.

    ``FileNotFoundError`` names the folder (and where it came from) when it or one of the files is missing.
    """
    if data_dir is not None:
        root, origin = Path(data_dir).expanduser(), "data_dir"
    elif os.environ.get(MNIST_DIR_ENV):
        root, origin = Path(os.environ[MNIST_DIR_ENV]).expanduser(), f"${MNIST_DIR_ENV}"
    else:
        candidates = [(base / ".." / "shared" / "data" / "mnist").resolve() for base in (_REPO_ROOT, Path.cwd())]
        root = next((c for c in candidates if c.is_dir()), None)
        origin = "the default ../shared/data/mnist"
        if root is None:
            raise FileNotFoundError(
                f"no MNIST folder: pass data_dir= or set ${MNIST_DIR_ENV} to a folder holding "
                f"{', '.join(MNIST_FILES.values())} (looked for {', '.join(map(str, candidates))})")
    if not root.is_dir():
        raise FileNotFoundError(f"MNIST data directory {str(root)!r} (from {origin}) does not exist")
    missing = [name for name in MNIST_FILES.values() if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(f"MNIST data directory {str(root)!r} (from {origin}) lacks {', '.join(missing)}")
    return root


def read_idx(path: Path, kind: str) -> np.ndarray:
    """One gzipped idx file as a ``uint8`` array: ``(n, rows, cols)`` images or ``(n,)`` labels.

    ``ValueError`` names the file when it is not gzip, has the wrong magic number, or its size disagrees with its
    header.
    """
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"MNIST file {str(path)!r} is corrupt (not a complete gzip file: {error})") from error
    header = 16 if kind == "images" else 8
    if len(raw) < header:
        raise ValueError(f"MNIST file {str(path)!r} is corrupt: {len(raw)} bytes, shorter than its header")
    dims = np.frombuffer(raw[:header], dtype=">u4")
    if int(dims[0]) != IDX_MAGIC[kind]:
        raise ValueError(
            f"MNIST file {str(path)!r} is corrupt: magic number {int(dims[0])}, expected {IDX_MAGIC[kind]}")
    shape = tuple(int(d) for d in dims[1:])
    if len(raw) - header != int(np.prod(shape)):
        raise ValueError(
            f"MNIST file {str(path)!r} is corrupt: header says {shape} ({int(np.prod(shape))} bytes of data), "
            f"file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def digits_dataset_dict(images: np.ndarray, labels: np.ndarray):
    """``train`` / ``test`` ``DatasetDict`` of ``images`` ``(n, h, w)`` uint8 and ``labels`` 0..9, split by index."""
    import datasets

    height, width = images.shape[1:]
    features = datasets.Features({
        "image": datasets.Array2D(shape=(height, width), dtype="uint8"),
        "label": datasets.ClassLabel(names=[str(d) for d in range(10)]),
    })
    is_test = np.arange(len(labels)) % TEST_EVERY == TEST_EVERY - 1
    splits = {}
    for split, rows in (("train", ~is_test), ("test", is_test)):
        data = {"image": images[rows], "label": labels[rows].astype(np.int64)}
        splits[split] = datasets.Dataset.from_dict(data, features=features)
    return datasets.DatasetDict(splits)


def load_mnist(data_dir: str | os.PathLike | None = None):
    """MNIST's 10,000 t10k images as ``DatasetDict`` ``train`` (8,000) / ``test`` (2,000); see the module doc."""
    root = resolve_mnist_dir(data_dir)
    images = read_idx(root / MNIST_FILES["images"], "images")
    labels = read_idx(root / MNIST_FILES["labels"], "labels")
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"MNIST files in {str(root)!r} disagree: images {images.shape}, labels {labels.shape}")
    if labels.max(initial=0) > 9:
        raise ValueError(f"MNIST labels in {str(root)!r} are corrupt: label {int(labels.max())} > 9")
    return digits_dataset_dict(images, labels)


def load_sklearn_digits():
    """scikit-learn's 1,797 8×8 digits (pixels 0..16) as ``DatasetDict`` ``train`` (1,438) / ``test`` (359)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return digits_dataset_dict(bunch.images.astype(np.uint8), bunch.target)
