"""Raw image sources: each returns (images uint8 [N, C, H, W] tensor, labels int64 [N] tensor, class names).

Nothing downloads unless the caller passes ``download=True``; a missing dataset raises
:class:`DatasetNotFoundError` naming every place looked at and how to get the files.
"""
import functools
import gzip
import os

import numpy as np
import torch

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
MNIST_CLASSES = tuple(str(i) for i in range(10))
# The Debian package fashion-mnist (and the analogous mnist layout) installs the original idx files here.
SYSTEM_DATA_DIRS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist", "mnist": "/usr/share/datasets/mnist"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DatasetNotFoundError(FileNotFoundError):
    pass


def default_root():
    """$CBGAN_EXT_DATA, else ~/.cache/cbgan_ext/data (where download=True puts torchvision datasets)."""
    return os.environ.get("CBGAN_EXT_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "cbgan_ext", "data")


# ----------------------------------------------------------------------------------------------- idx (MNIST-like)

def read_idx(path):
    """An idx file (optionally gzipped) as a read-only numpy array: magic 0x0000 08 NDIM, big-endian int32 dims,
    uint8 data. The last few files read stay cached (train and test are often loaded back to back)."""
    st = os.stat(path)
    return _read_idx_cached(os.path.abspath(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _read_idx_cached(path, mtime_ns, size):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"read_idx: {path} is not an idx file of unsigned bytes (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4).astype(np.int64)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"read_idx: {path} holds {data.size} bytes of data, its header says {tuple(dims)}")
    data = data.reshape(tuple(dims))
    data.flags.writeable = False
    return data


_IDX_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find_idx_pair(directory, split):
    img_stem, lbl_stem = _IDX_STEMS[split]
    for ext in (".gz", ""):
        img, lbl = os.path.join(directory, img_stem + ext), os.path.join(directory, lbl_stem + ext)
        if os.path.isfile(img) and os.path.isfile(lbl):
            return img, lbl
    return None


def _load_idx_dataset(name, split, root, download, tv_class, tv_folder, classes):
    if split not in _IDX_STEMS:
        raise ValueError(f"get_dataset: {name} has splits 'train' and 'test', got split={split!r}")
    candidates = []
    if root is not None:
        # the files themselves, or torchvision's layout under root
        candidates += [root, os.path.join(root, tv_folder, "raw"), os.path.join(root, name)]
    candidates.append(SYSTEM_DATA_DIRS[name])
    tv_root = root if root is not None else default_root()
    candidates.append(os.path.join(tv_root, tv_folder, "raw"))
    for d in candidates:
        pair = _find_idx_pair(d, split)
        if pair is not None:
            images, labels = read_idx(pair[0]), read_idx(pair[1])
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise ValueError(f"get_dataset: {name} files in {d} have shapes {images.shape} and {labels.shape}")
            return (torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                    classes, pair[0])
    if download:
        tv_class(tv_root, train=(split == "train"), download=True)
        pair = _find_idx_pair(os.path.join(tv_root, tv_folder, "raw"), split)
        if pair is not None:
            images, labels = read_idx(pair[0]), read_idx(pair[1])
            return (torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                    classes, pair[0])
    how = (f"give a directory holding {_IDX_STEMS[split][0]}.gz and {_IDX_STEMS[split][1]}.gz (--root, "
           f"root=), or let torchvision fetch them into {tv_root} (--download, download=True; needs internet)")
    if name == "fashion-mnist":
        how += ", or install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"
    raise DatasetNotFoundError(f"get_dataset: {name} ({split}) not found; looked in {candidates}; {how}")


def load_fashion_mnist(split, root=None, download=False):
    from torchvision.datasets import FashionMNIST
    return _load_idx_dataset("fashion-mnist", split, root, download, FashionMNIST, "FashionMNIST",
                             FASHION_MNIST_CLASSES)


def load_mnist(split, root=None, download=False):
    from torchvision.datasets import MNIST
    return _load_idx_dataset("mnist", split, root, download, MNIST, "MNIST", MNIST_CLASSES)


# ----------------------------------------------------------------------------------------------- CIFAR

def _load_cifar(name, split, root, download):
    from torchvision import datasets
    if split not in ("train", "test"):
        raise ValueError(f"get_dataset: {name} has splits 'train' and 'test', got split={split!r}")
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    tv_root = root if root is not None else default_root()
    try:
        ds = cls(tv_root, train=(split == "train"), download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted."
        raise DatasetNotFoundError(
            f"get_dataset: {name} ({split}) not found or corrupted in {os.path.join(tv_root, cls.base_folder)} "
            f"({e}); give the directory holding {cls.base_folder}/ (--root, root=; the python version from "
            f"{cls.url}), or --download / download=True (needs internet)") from e
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    return images, torch.as_tensor(ds.targets, dtype=torch.int64), tuple(ds.classes), ds.root


def load_cifar10(split, root=None, download=False):
    return _load_cifar("cifar10", split, root, download)


def load_cifar100(split, root=None, download=False):
    return _load_cifar("cifar100", split, root, download)


# ----------------------------------------------------------------------------------------------- digits

DIGITS_TEST_PER_CLASS = 35


def load_digits(split, root=None, download=False):
    """scikit-learn's embedded 8×8 digits (1797 images, 0..16 grey levels scaled to 0..255).

    No official split: a fixed shuffle (independent of any user seed) puts 35 images of each class in "test"
    (a balanced 350) and the other 1447 in "train".
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    if split not in ("train", "test", "all"):
        raise ValueError(f"get_dataset: digits has splits 'train', 'test' and 'all', got split={split!r}")
    d = _sk_load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = d.target.astype(np.int64)
    if split != "all":
        rs = np.random.RandomState(20240601)
        test = np.zeros(len(labels), dtype=bool)
        for k in range(10):
            idx = np.where(labels == k)[0]
            test[rs.permutation(idx)[:DIGITS_TEST_PER_CLASS]] = True
        keep = test if split == "test" else ~test
        images, labels = images[keep], labels[keep]
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels), MNIST_CLASSES, "sklearn"


# ----------------------------------------------------------------------------------------------- image folder

def load_folder(split, root=None, download=False, image_size=None, channels=3):
    """An ImageFolder: root/<class>/<image>, or root/<split>/<class>/<image> when root/<split> exists.

    All images are decoded once into one uint8 tensor: RGB (or L for channels=1), resized so the shorter side
    is image_size and center-cropped; without image_size all images must share one size.
    """
    from PIL import Image
    if root is None:
        raise ValueError("get_dataset: 'folder' needs root= a directory with one sub-directory per class")
    base = os.path.join(root, split) if os.path.isdir(os.path.join(root, split)) else root
    if not os.path.isdir(base):
        raise DatasetNotFoundError(f"get_dataset: folder dataset root {base!r} is not a directory")
    classes = sorted(e.name for e in os.scandir(base) if e.is_dir())
    if not classes:
        raise DatasetNotFoundError(f"get_dataset: no class sub-directories in {base!r} (expected root/<class>/<img>)")
    files, labels = [], []
    for k, c in enumerate(classes):
        for dirpath, _, names in sorted(os.walk(os.path.join(base, c))):
            for n in sorted(names):
                if n.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(os.path.join(dirpath, n))
                    labels.append(k)
    if not files:
        raise DatasetNotFoundError(f"get_dataset: no images ({', '.join(IMAGE_EXTENSIONS)}) under {base!r}")
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for path in files:
        with Image.open(path) as im:
            im = im.convert(mode)
            if image_size is not None:
                w, h = im.size
                s = image_size / min(w, h)
                nw, nh = max(image_size, round(w * s)), max(image_size, round(h * s))
                im = im.resize((nw, nh), Image.BICUBIC)
                left, top = (nw - image_size) // 2, (nh - image_size) // 2
                im = im.crop((left, top, left + image_size, top + image_size))
            a = np.asarray(im, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"get_dataset: images under {base!r} have several sizes {sorted(shapes)[:4]}...; "
                         f"pass image_size= to resize them")
    return (torch.from_numpy(np.stack(arrays)), torch.tensor(labels, dtype=torch.int64), tuple(classes), base)


# Classes of the named datasets, known before loading them (so arguments are checked before any work);
# ``folder`` has as many as its subfolders.
# Images per class of the fixed public splits, so that a subset they cannot hold is refused before loading.
SPLIT_COUNTS = {
    ("fashion-mnist", "train"): (6000,) * 10, ("fashion-mnist", "test"): (1000,) * 10,
    ("mnist", "train"): (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    ("mnist", "test"): (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
    ("cifar10", "train"): (5000,) * 10, ("cifar10", "test"): (1000,) * 10,
    ("cifar100", "train"): (500,) * 100, ("cifar100", "test"): (100,) * 100,
}
NUM_CLASSES = {"fashion-mnist": 10, "mnist": 10, "cifar10": 10, "cifar100": 100, "digits": 10}

SOURCES = {
    "fashion-mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "digits": load_digits,
    "folder": load_folder,
}
