import gzip
import math
import os
import struct
import sys

import numpy as np
import pytest
import torch

from cbgan_ext.data import (DatasetNotFoundError, ImageDataset, get_dataset, list_datasets, long_tailed_counts,
                            long_tailed_indices, read_idx)
from cbgan_ext.data import long_tailed as lt

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
needs_fmnist = pytest.mark.skipif(not os.path.exists(os.path.join(FMNIST_DIR, "train-images-idx3-ubyte.gz")),
                                  reason="Debian fashion-mnist package not installed")


# ------------------------------------------------------------------------------------------ published counts

def test_exp_counts_match_ldam_cifar10_rho100():
    assert long_tailed_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.mark.parametrize("n_max,K,rho,total", [
    (5000, 10, 100, 12406), (5000, 10, 50, 13996), (5000, 10, 10, 20431),  # CIFAR-10-LT (LDAM, Table 1 sets)
    (500, 100, 100, 10847), (500, 100, 50, 12608), (500, 100, 10, 19573),  # CIFAR-100-LT
])
def test_exp_totals_match_published_long_tailed_cifar(n_max, K, rho, total):
    counts = long_tailed_counts(n_max, K, rho)
    assert sum(counts) == total
    assert counts[0] == n_max and counts[-1] == int(n_max / rho)
    assert all(a >= b for a, b in zip(counts, counts[1:]))


def test_exp_rho_1_is_balanced_and_rho_is_the_max_min_ratio():
    assert long_tailed_counts(6000, 10, 1.0) == [6000] * 10
    c = long_tailed_counts(6000, 10, 100)
    assert c[0] / c[-1] == pytest.approx(100, rel=1e-9)
    assert long_tailed_counts(7, 1, 100) == [7]


def test_step_profile():
    assert long_tailed_counts(5000, 10, 100, "step") == [5000] * 5 + [50] * 5
    assert long_tailed_counts(500, 7, 10, "step") == [500] * 3 + [50] * 4


def test_softlabel_lognormal_reproduces_imbalanced_cifar10():
    # Softlabel-GAN §5.1 / Table 1: 3208 images, 65-1720 a class (their code: num_samples 5000, seed 15)
    c = long_tailed_counts(5000, 10, profile="lognormal", seed=15)
    assert (sum(c), min(c), max(c)) == (3208, 65, 1720)


def test_softlabel_chi2_reproduces_imbalanced_cifar100():
    c = long_tailed_counts(5000, 100, profile="chi2", seed=15)  # 2993 images, 6-36 a class
    assert (sum(c), min(c), max(c)) == (2993, 6, 36)


@pytest.mark.parametrize("profile", ["lognormal", "chi2", "pareto"])
def test_softlabel_profiles_are_cdf_differences_permuted_by_seed(profile, monkeypatch):
    K, n = 20, 5000
    lo, hi = lt._SOFTLABEL_RANGE[profile]
    edges = np.linspace(lo, hi, K + 1)
    with_scipy = lt._softlabel_cdf(profile, edges)
    monkeypatch.setitem(sys.modules, "scipy", None)  # the closed forms used without scipy
    closed = lt._softlabel_cdf(profile, edges)
    np.testing.assert_allclose(closed, with_scipy, rtol=1e-9, atol=1e-12)
    bins = [int(n * d) for d in np.diff(with_scipy)]
    a = long_tailed_counts(n, K, profile=profile, seed=1)
    b = long_tailed_counts(n, K, profile=profile, seed=2)
    assert sorted(a) == sorted(bins) == sorted(b)
    assert a != b  # the class order follows the seed
    assert a == long_tailed_counts(n, K, profile=profile, seed=1)


def test_bagan_one_minority_class():
    c = long_tailed_counts(6000, 10, profile="bagan", minority_class=3, drop_fraction=0.975)
    assert c == [6000, 6000, 6000, 150, 6000, 6000, 6000, 6000, 6000, 6000]
    assert long_tailed_counts(6000, 10, 40, profile="bagan", minority_class=3) == c
    assert long_tailed_counts(5000, 10, profile="bagan", drop_fraction=0.4)[0] == 3000


@pytest.mark.parametrize("kwargs,match", [
    (dict(imbalance_ratio=0.5), "imbalance_ratio must be"),
    (dict(imbalance_ratio=float("nan")), "imbalance_ratio must be"),
    (dict(imbalance_ratio=float("inf")), "imbalance_ratio must be"),
    (dict(profile="zipf"), "unknown profile"),
    (dict(n_max=0), "n_max must be"),
    (dict(n_max=10.5), "n_max must be"),
    (dict(num_classes=0), "num_classes must be"),
    (dict(n_max=50, imbalance_ratio=100), "no samples"),
    (dict(profile="bagan", minority_class=10), "minority_class"),
    (dict(profile="bagan", drop_fraction=1.0), "drop_fraction"),
])
def test_long_tailed_counts_bad_input(kwargs, match):
    args = dict(n_max=5000, num_classes=10, imbalance_ratio=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        long_tailed_counts(args.pop("n_max"), args.pop("num_classes"), **args)


def test_long_tailed_indices_follow_ldam_selection_and_seed():
    rs = np.random.RandomState(0)
    labels = rs.randint(0, 5, size=500)
    counts = [40, 30, 20, 10, 5]
    idx = long_tailed_indices(labels, counts, seed=3)
    assert np.bincount(labels[idx], minlength=5).tolist() == counts
    assert len(set(idx.tolist())) == len(idx)
    np.testing.assert_array_equal(idx, long_tailed_indices(labels, counts, seed=3))
    assert not np.array_equal(idx, long_tailed_indices(labels, counts, seed=4))
    # LDAM: np.random.seed(seed), then per class np.where + np.random.shuffle, keep the first n_k
    ref_rs, ref = np.random.RandomState(3), []
    for k, n in enumerate(counts):
        cls = np.where(labels == k)[0]
        ref_rs.shuffle(cls)
        ref.append(cls[:n])
    np.testing.assert_array_equal(idx, np.concatenate(ref))
    with pytest.raises(ValueError, match="class 0 has .* but 1000 were requested"):
        long_tailed_indices(labels, [1000, 1, 1, 1, 1])


# ------------------------------------------------------------------------------------------ datasets

def test_digits_offline_split_and_range():
    tr, te = get_dataset("digits"), get_dataset("digits", split="test")
    assert len(tr) + len(te) == 1797
    assert te.class_counts == [35] * 10 and sum(tr.class_counts) == len(tr)
    x, y = tr[0]
    assert x.dtype == torch.float32 and x.shape == (1, 8, 8) and isinstance(y, int)
    allx = tr.float_images()
    assert allx.min() == -1.0 and allx.max() == 1.0
    # disjoint: no test image (with its label) appears among the train images of that class
    trk = {(bytes(a.numpy()), int(y)) for a, y in zip(tr.images, tr.labels)}
    # sklearn's digits hold a few duplicates
    assert sum((bytes(a.numpy()), int(y)) in trk for a, y in zip(te.images, te.labels)) < 5


def test_digits_long_tailed_is_deterministic():
    a = get_dataset("digits", imbalance_ratio=10, seed=1)
    b = get_dataset("digits", imbalance_ratio=10, seed=1)
    c = get_dataset("digits", imbalance_ratio=10, seed=2)
    n_max = min(get_dataset("digits").class_counts)
    assert a.class_counts == long_tailed_counts(n_max, 10, 10) == c.class_counts
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.indices, c.indices)
    assert a.config["imbalance_ratio"] == 10 and a.config["name"] == "digits"


def test_batches_match_getitem_and_cover_the_set():
    ds = get_dataset("digits", split="test")
    xs, ys = zip(*ds.batches(64, shuffle=False))
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (350, 1, 8, 8)
    for i in (0, 17, 349):
        xi, yi = ds[i]
        assert torch.equal(x[i], xi) and int(y[i]) == yi
    g = torch.Generator().manual_seed(0)
    ys = torch.cat([b[1] for b in ds.batches(64, shuffle=True, generator=g)])
    assert torch.equal(ys.sort().values, ds.labels.sort().values)


def test_image_size_pad_resize_and_channels():
    raw = get_dataset("digits", split="test")
    pad = get_dataset("digits", split="test", image_size=12)  # 1 channel, even margin: padded
    assert pad.image_shape == (1, 12, 12)
    assert torch.equal(pad.images[:, :, 2:10, 2:10], raw.images)
    assert (pad.images[:, :, :2] == 0).all()
    rs = get_dataset("digits", split="test", image_size=16, resize_mode="resize")
    assert rs.image_shape == (1, 16, 16)
    assert (rs.images.float().mean() - raw.images.float().mean()).abs() < 3
    rgb = get_dataset("digits", split="test", channels=3)
    assert rgb.image_shape == (3, 8, 8) and torch.equal(rgb.images[:, 1], raw.images[:, 0])
    with pytest.raises(ValueError, match="cannot pad"):
        get_dataset("digits", split="test", image_size=4, resize_mode="pad")


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(name="imagenet-lt"), ValueError, "unknown dataset 'imagenet-lt'"),
    (dict(name="digits", imbalance_ratio=0.9), ValueError, "imbalance_ratio must be >= 1"),
    (dict(name="digits", profile="zipf"), ValueError, "unknown profile"),
    (dict(name="digits", n_max=1000, imbalance_ratio=10), ValueError, "cannot hold"),
    (dict(name="digits", profile="lognormal"), ValueError, "1720"),  # the paper's 5000 exceeds digits
    (dict(name="digits", split="val"), ValueError, "splits"),
    (dict(name="digits", image_size=0), ValueError, "image_size"),
    (dict(name="digits", resize_mode="crop"), ValueError, "resize_mode"),
])
def test_get_dataset_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        get_dataset(**kwargs)


def test_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        get_dataset("mnist", root=str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path) in msg and "download=True" in msg
    with pytest.raises(DatasetNotFoundError) as e:
        get_dataset("cifar10", root=str(tmp_path))
    assert str(tmp_path) in str(e.value) and "download=True" in str(e.value)
    assert not any(tmp_path.iterdir())  # nothing was downloaded
    with pytest.raises(DatasetNotFoundError, match="class sub-directories"):
        get_dataset("folder", root=str(tmp_path))
    with pytest.raises(ValueError, match="needs root"):
        get_dataset("folder")


def _write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(">" + "i" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_files_under_root_in_torchvision_layout(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rs = np.random.RandomState(0)
    imgs = rs.randint(0, 256, size=(30, 28, 28))
    labels = np.repeat(np.arange(10), 3)
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", labels)
    ds = get_dataset("fashion-mnist", split="test", root=str(tmp_path), image_size=32)
    assert len(ds) == 30 and ds.class_counts == [3] * 10 and ds.image_shape == (1, 32, 32)
    assert torch.equal(ds.images[:, 0, 2:30, 2:30], torch.from_numpy(imgs.astype(np.uint8)))
    assert ds.classes[0] == "T-shirt/top"
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(str(bad))


def test_image_folder(tmp_path):
    from PIL import Image
    rs = np.random.RandomState(0)
    for c, n in (("cat", 3), ("dog", 5)):
        (tmp_path / c).mkdir()
        for i in range(n):
            Image.fromarray(rs.randint(0, 256, size=(10 + i, 12, 3)).astype(np.uint8)).save(tmp_path / c / f"{i}.png")
    ds = get_dataset("folder", root=str(tmp_path), image_size=8)
    assert ds.classes == ("cat", "dog") and ds.class_counts == [3, 5] and ds.image_shape == (3, 8, 8)
    x, y = ds[4]
    assert x.min() >= -1 and x.max() <= 1 and y == 1
    with pytest.raises(ValueError, match="several sizes"):
        get_dataset("folder", root=str(tmp_path))
    lt_ = get_dataset("folder", root=str(tmp_path), image_size=8, imbalance_ratio=3, n_max=3)
    assert lt_.class_counts == [3, 1]


@needs_fmnist
def test_fashion_mnist_from_debian_files_long_tailed():
    ds = get_dataset("fashion-mnist", image_size=32, imbalance_ratio=100, seed=0)
    assert ds.class_counts == long_tailed_counts(6000, 10, 100) == [6000, 3596, 2156, 1292, 774, 464, 278, 166, 100,
                                                                    60]
    assert ds.image_shape == (1, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.config["source"].startswith(FMNIST_DIR)
    again = get_dataset("fashion-mnist", image_size=32, imbalance_ratio=100, seed=0)
    assert torch.equal(ds.indices, again.indices)
    full = get_dataset("fashion-mnist")
    assert len(full) == 60000 and full.class_counts == [6000] * 10
    # padding 28 -> 32 keeps every pixel: the subset images are the full set's at the recorded indices
    assert torch.equal(ds.images[:50, :, 2:30, 2:30], full.images[ds.indices[:50]])
    assert torch.equal(ds.labels, full.labels[ds.indices])
    test = get_dataset("fashion-mnist", split="test", image_size=32)
    assert len(test) == 10000 and test.class_counts == [1000] * 10


def test_list_datasets():
    assert set(list_datasets()) == {"fashion-mnist", "mnist", "cifar10", "cifar100", "digits", "folder"}
    assert isinstance(get_dataset("digits", split="test"), ImageDataset)
    assert math.isclose(get_dataset("digits", split="test").float_images().mean().item(),
                        get_dataset("digits", split="test").images.float().mean().item() / 127.5 - 1, rel_tol=1e-5)


def test_first_selection_keeps_the_first_images_of_each_class_in_dataset_order():
    pytest.importorskip("sklearn")
    full = get_dataset("digits", "train")
    first = get_dataset("digits", "train", imbalance_ratio=10.0, selection="first")
    shuffled = get_dataset("digits", "train", imbalance_ratio=10.0)
    assert first.class_counts == shuffled.class_counts
    labels = full.labels
    for k, n in enumerate(first.class_counts):
        want = torch.nonzero(labels == k).flatten()[:n]
        assert torch.equal(first.indices[first.labels == k], want)
    assert not torch.equal(first.indices, shuffled.indices)
    assert first.config["selection"] == "first" and "selection" not in shuffled.config  # older configs match
    from cbgan_ext.data import dataset_from_config
    again = dataset_from_config(first.config)
    assert torch.equal(again.indices, first.indices)
    with pytest.raises(ValueError, match="selection must be one of"):
        get_dataset("digits", "train", selection="last")
