"""In-memory image datasets with long-tailed subsets: ``get_dataset``.

The whole split is one uint8 tensor [N, C, H, W] (Fashion-MNIST train padded to 32×32 is 61 MB), so GAN and
classifier loops can slice batches without a DataLoader; items are float CHW in [−1, 1] (x/127.5 − 1), the
generator's range.
"""
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .long_tailed import PROFILES, SELECTIONS, long_tailed_indices, minority_classes, subset_counts
from .sources import SOURCES

RESIZE_MODES = ("auto", "pad", "resize")


def to_float(images_uint8):
    """uint8 images → float32 in [−1, 1]."""
    return images_uint8.to(torch.float32).div_(127.5).sub_(1.0)


def _resize_uint8(images, size, mode):
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    if mode == "auto":
        # Single-channel digit/clothing images sit on a black background: padding keeps every pixel exact.
        mode = "pad" if (c == 1 and size > max(h, w) and (size - h) % 2 == 0 and (size - w) % 2 == 0) else "resize"
    if mode == "pad":
        if size < h or size < w:
            raise ValueError(f"get_dataset: cannot pad {h}x{w} images to {size}x{size}; use resize_mode='resize'")
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(images, (left, size - w - left, top, size - h - top), value=0)
    out = torch.empty((n, c, size, size), dtype=torch.uint8)
    for i in range(0, n, 4096):  # chunks bound the float copy's memory
        x = images[i:i + 4096].to(torch.float32)
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < h)
        out[i:i + 4096] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


class ImageDataset(Dataset):
    """(image float [C, H, W] in [−1, 1], label int) pairs held in memory.

    Attributes: ``images`` uint8 [N, C, H, W], ``labels`` int64 [N], ``class_counts`` (list, per class),
    ``num_classes``, ``classes`` (names), ``indices`` (positions in the full split), ``config`` (how it was
    built: what a checkpoint records).
    """

    def __init__(self, images, labels, num_classes, classes=None, indices=None, config=None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"ImageDataset: images must be uint8 [N, C, H, W], "
                             f"got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"ImageDataset: labels must be [N]={images.shape[0]}, got {tuple(labels.shape)}")
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)
        self.num_classes = int(num_classes)
        self.classes = tuple(classes) if classes is not None else tuple(str(k) for k in range(self.num_classes))
        self.indices = indices
        self.config = dict(config or {})
        self.class_counts = torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        return to_float(self.images[i]), int(self.labels[i])

    @property
    def image_shape(self):
        return tuple(self.images.shape[1:])

    def float_images(self, device=None):
        """All images as one float tensor in [−1, 1] (4 bytes a pixel: prefer ``batches`` for big sets)."""
        return to_float(self.images.to(device) if device is not None else self.images)

    def float_images_at(self, idx, device=None):
        """Images ``idx`` (an index tensor) as float in [−1, 1], converted after the move to ``device``."""
        x = self.images[idx]
        return to_float(x.to(device, non_blocking=True) if device is not None else x)

    def batches(self, batch_size, shuffle=True, generator=None, drop_last=False, device=None):
        """Yields (float images in [−1, 1], labels) batches straight from the in-memory tensor."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            idx = order[i:i + batch_size]
            x, y = self.images[idx], self.labels[idx]
            if device is not None:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            yield to_float(x), y

    def __repr__(self):
        c = self.config
        return (f"ImageDataset({c.get('name', '?')}, split={c.get('split', '?')}, n={len(self)}, "
                f"shape={self.image_shape}, imbalance_ratio={c.get('imbalance_ratio')}, profile={c.get('profile')}, "
                f"class_counts={self.class_counts})")


def list_datasets():
    return sorted(SOURCES)


def get_dataset(name: str, split: str = "train", root: Optional[str] = None, image_size: Optional[int] = None,
                imbalance_ratio: float = 1.0, profile: str = "exp", seed: int = 0, *, n_max: Optional[int] = None,
                minority_class=0, drop_fraction: Optional[float] = None, download: bool = False,
                resize_mode: str = "auto", channels: Optional[int] = None,
                selection: str = "shuffle") -> "ImageDataset":
    """A dataset of (image float CHW in [−1, 1], label), optionally a long-tailed subset.

    name: ``fashion-mnist``, ``mnist``, ``cifar10``, ``cifar100``, ``digits`` or ``folder`` (``root`` an
    ImageFolder). ``image_size`` pads or resizes to a square (``resize_mode``: "auto" pads 1-channel images
    when the margin is even, e.g. Fashion-MNIST 28 → 32, and resizes otherwise).

    Subset: ``long_tailed_counts(n_max, K, imbalance_ratio, profile, seed=seed, ...)`` with n_max the smallest
    class of the split (LDAM's 5000 for CIFAR-10) or, for Softlabel-GAN's profiles, 5000 (the paper's
    value); pass ``n_max`` to change it. With imbalance_ratio 1 and profile "exp"/"step" the split is kept
    whole. The kept images of each class are chosen by a shuffle seeded by ``seed``: deterministic;
    ``selection="first"`` keeps the first ones of each class in dataset order (the Softlabel-GAN code's).
    ``download=True`` lets torchvision fetch mnist/fashion-mnist/cifar (never by default).
    """
    key = str(name).lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10",
           "cifar-100": "cifar100", "imagefolder": "folder"}.get(key, key)
    if key not in SOURCES:
        raise ValueError(f"get_dataset: unknown dataset {name!r}; available: {', '.join(list_datasets())}")
    if profile not in PROFILES:
        raise ValueError(f"get_dataset: unknown profile {profile!r}; choose one of {PROFILES}")
    if selection not in SELECTIONS:
        raise ValueError(f"get_dataset: selection must be one of {SELECTIONS}, got {selection!r}")
    rho = float(imbalance_ratio)
    if not rho >= 1.0:
        raise ValueError(f"get_dataset: imbalance_ratio must be >= 1 (largest class / smallest class), "
                         f"got {imbalance_ratio!r}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"get_dataset: resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise ValueError(f"get_dataset: image_size must be a positive integer, got {image_size!r}")

    if key == "folder":
        images, labels, classes, source = SOURCES[key](split, root, download, image_size=image_size,
                                                       channels=channels or 3)
    else:
        images, labels, classes, source = SOURCES[key](split, root, download)
        if channels is not None and channels != images.shape[1]:
            if channels == 3 and images.shape[1] == 1:
                images = images.expand(-1, 3, -1, -1)
            elif channels == 1 and images.shape[1] == 3:  # ITU-R 601 luma, as PIL's convert("L")
                w = torch.tensor([299.0, 587.0, 114.0]).view(1, 3, 1, 1) / 1000.0
                images = (images.to(torch.float32) * w).sum(1, keepdim=True).round_().to(torch.uint8)
            else:
                raise ValueError(f"get_dataset: channels must be 1 or 3, got {channels!r}")
    if image_size is not None:
        images = _resize_uint8(images, int(image_size), resize_mode)
    num_classes = len(classes)
    if profile == "bagan":  # one spelling in the config: an int for one class, a sorted list for several
        m = minority_classes(minority_class, num_classes, "get_dataset")
        minority_class = m[0] if len(m) == 1 else list(m)

    full_counts = torch.bincount(labels, minlength=num_classes)
    indices = None
    counts_asked = subset_counts(full_counts.tolist(), rho, profile, n_max, seed=seed, minority_class=minority_class,
                                 drop_fraction=drop_fraction)
    if counts_asked is not None:
        try:
            indices = long_tailed_indices(labels.numpy(), counts_asked, seed=seed, selection=selection)
        except ValueError as e:
            raise ValueError(f"get_dataset: {key} ({split}) cannot hold the {profile!r} subset {counts_asked} "
                             f"(the split has {full_counts.tolist()} per class): {e}") from None
        idx = torch.from_numpy(indices.astype(np.int64))
        images, labels = images[idx], labels[idx]
        indices = idx
    config = dict(name=key, split=split, root=None if root is None else str(root), source=str(source),
                  image_size=None if image_size is None else int(image_size), imbalance_ratio=rho, profile=profile,
                  seed=int(seed), n_max=n_max, minority_class=minority_class, drop_fraction=drop_fraction,
                  resize_mode=resize_mode, channels=channels)
    if selection != "shuffle":  # recorded only when not the default, so that older run configs still match
        config["selection"] = selection
    return ImageDataset(images, labels, num_classes, classes, indices, config)


def dataset_from_config(config, **overrides):
    """Rebuilds a dataset from an ``ImageDataset.config`` (as stored in checkpoints)."""
    c = dict(config)
    c.update(overrides)
    return get_dataset(c["name"], split=c.get("split", "train"), root=c.get("root"), image_size=c.get("image_size"),
                       imbalance_ratio=c.get("imbalance_ratio", 1.0), profile=c.get("profile", "exp"),
                       seed=c.get("seed", 0), n_max=c.get("n_max"), minority_class=c.get("minority_class", 0),
                       drop_fraction=c.get("drop_fraction"), resize_mode=c.get("resize_mode", "auto"),
                       channels=c.get("channels"), download=c.get("download", False),
                       selection=c.get("selection", "shuffle"))
