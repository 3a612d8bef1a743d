"""Training the classifier in the loop (CBGAN's regularizer, Softlabel-GAN's soft labels) and the annotator.

LDAM-DRW's recipe (Cao et al. 2019, ``train.py``), with its 200-epoch schedule scaled to ``epochs``: SGD
(momentum 0.9, weight decay 2e-4), linear warm-up over the first 5/200 of training, learning rate ×0.01 at
80% and ×0.0001 at 90% (``lr_schedule="step"``; or ``"cosine"``), DRW from 80% on, random crop (padding 1/8
of the side) and horizontal flip. The schedule is evaluated per iteration, so fractional points work for
runs of a few epochs.

Short CPU runs: DRW with a cosine schedule and re-weighting from ~70% of the epochs trained best on
Fashion-MNIST-LT (ρ = 100, 32×32): ResNet-32 at width 0.5, 10 epochs, bf16 autocast, one thread reached 85.9%
balanced test accuracy in ~250 CPU seconds; LDAM-DRW's cosine head lags in so few epochs.

Checkpoints are written atomically (temporary file, then ``os.replace``) at every epoch end, every
``checkpoint_every_s`` seconds within an epoch, and at a time limit. Each epoch's order is drawn from a
generator seeded by (seed, epoch) and each batch's augmentation from one seeded by (seed, epoch, batch), so a
resumed run follows the same data as an uninterrupted one.
"""
import hashlib
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

from ..data import ImageDataset, dataset_from_config, get_dataset
from ..models.classifier import CifarResNet, load_classifier
from ..nn.long_tail_losses import LOSSES, LongTailLoss
from .checkpoint import save_atomic

CHECKPOINT_FORMAT = "cbgan_ext.classifier/1"
LR_SCHEDULES = ("step", "cosine", "constant")
AUGMENTS = ("crop-flip", "crop", "none")
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# What must agree between a checkpoint and the arguments of a resumed run.
_RESUME_KEYS = ("dataset", "root", "imbalance_ratio", "profile", "seed", "image_size", "n_max", "loss", "width",
                "depth", "batch_size", "lr", "momentum", "weight_decay", "lr_schedule", "augment", "amp")


# One atomic writer for every checkpoint of the package (temp file, fsync, os.replace).
atomic_save = save_atomic


def _generator(*seeds):
    g = torch.Generator()
    g.manual_seed(int(hashlib.sha256(repr(seeds).encode()).hexdigest()[:15], 16))
    return g


def augment_batch(x, mode, generator):
    """Random crop after padding by side/8 (pad value −1, black) and/or horizontal flip, per sample."""
    if mode == "none":
        return x
    b, c, h, w = x.shape
    p = max(1, h // 8)
    dy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    xp = F.pad(x, (p, p, p, p), value=-1.0)
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)
    cols = (dx[:, None] + torch.arange(w)[None])
    if mode == "crop-flip":
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    cols = cols.to(x.device)
    xp = xp.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w + 2 * p))
    return xp.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


def learning_rate(base_lr, progress, epochs, schedule, warmup_epochs):
    """lr at fractional epoch ``progress`` of ``epochs``."""
    if warmup_epochs > 0 and progress < warmup_epochs:  # LDAM: lr·(e+1)/5 over epochs 0..4, made continuous
        return base_lr * (0.2 + 0.8 * progress / warmup_epochs)
    if schedule == "step":  # LDAM-DRW: ×0.01 at 160/200, ×0.0001 at 180/200
        return base_lr * (1e-4 if progress >= 0.9 * epochs else 1e-2 if progress >= 0.8 * epochs else 1.0)
    if schedule == "cosine":
        t = (progress - warmup_epochs) / max(1e-9, epochs - warmup_epochs)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    return base_lr


@torch.no_grad()
def evaluate(model, dataset, batch_size=500, device="cpu", amp="none", channels_last=False):
    """Overall, balanced (mean per-class) and per-class accuracy; classes absent from ``dataset`` give NaN."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    K = dataset.num_classes
    correct = torch.zeros(K, dtype=torch.int64)
    total = torch.zeros(K, dtype=torch.int64)
    for x, y in dataset.batches(batch_size, shuffle=False, device=device):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=AMP_DTYPES[amp] or torch.bfloat16, enabled=amp != "none"):
            pred = model(x).argmax(1).cpu()
        y = y.cpu()
        total += torch.bincount(y, minlength=K)
        correct += torch.bincount(y[pred == y], minlength=K)
    model.train(was_training)
    per_class = [float(c) / float(t) if t > 0 else float("nan") for c, t in zip(correct.tolist(), total.tolist())]
    present = [a for a in per_class if not math.isnan(a)]
    return dict(accuracy=float(correct.sum()) / max(1, int(total.sum())),
                balanced_accuracy=sum(present) / max(1, len(present)), per_class_accuracy=per_class)


def fast_bf16(device):
    """Whether bf16 autocast speeds up training here: CUDA with bf16 support, or a CPU with AVX-512 BF16 / AMX
    (on AVX2-only CPUs bf16 convolutions run ~10x slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_amp(amp, device):
    """"auto" → "bf16" where it is fast (``fast_bf16``), else "none"; other values pass through."""
    if amp == "auto":
        return "bf16" if fast_bf16(device) else "none"
    return amp


def _default_config(**kw):
    cfg = dict(dataset="fashion-mnist", root=None, imbalance_ratio=1.0, profile="exp", seed=0, image_size=None,
               n_max=None, loss="ce", epochs=10, batch_size=128, lr=0.1, momentum=0.9, weight_decay=2e-4,
               width=1.0, depth=32, lr_schedule="step", warmup_epochs=None, drw_epoch=None, augment="crop-flip",
               eval_every=1, eval_batch_size=500, device="cpu", checkpoint_every_s=300.0, max_minutes=None,
               download=False, amp="none", channels_last=True)
    unknown = set(kw) - set(cfg)
    if unknown:
        raise TypeError(f"train_classifier: unknown arguments {sorted(unknown)}")
    cfg.update(kw)
    cfg["amp"] = resolve_amp(cfg["amp"], cfg["device"])
    if cfg["loss"] not in LOSSES:
        raise ValueError(f"train_classifier: unknown loss {cfg['loss']!r}; choose one of {LOSSES}")
    if cfg["lr_schedule"] not in LR_SCHEDULES:
        raise ValueError(f"train_classifier: lr_schedule must be one of {LR_SCHEDULES}, got {cfg['lr_schedule']!r}")
    if cfg["amp"] not in AMP_DTYPES:
        raise ValueError(f"train_classifier: amp must be one of {tuple(AMP_DTYPES)}, got {cfg['amp']!r}")
    if cfg["augment"] not in AUGMENTS:
        raise ValueError(f"train_classifier: augment must be one of {AUGMENTS}, got {cfg['augment']!r}")
    if not cfg["epochs"] > 0 or cfg["batch_size"] < 1:
        raise ValueError(f"train_classifier: epochs and batch_size must be positive, got {cfg['epochs']}, "
                         f"{cfg['batch_size']}")
    E = float(cfg["epochs"])
    if cfg["warmup_epochs"] is None:
        cfg["warmup_epochs"] = 5.0 / 200.0 * E
    if cfg["drw_epoch"] is None:
        cfg["drw_epoch"] = 0.8 * E
    return cfg


def _log_epoch(log, rec, classes):
    per = " ".join(f"{c[:8]}={a * 100:.1f}" for c, a in zip(classes, rec["per_class_accuracy"]))
    log(f"epoch {rec['epoch']:g}: train loss {rec['train_loss']:.4f}, test acc {rec['accuracy'] * 100:.2f}%, "
        f"balanced {rec['balanced_accuracy'] * 100:.2f}% ({rec['train_time_s']:.0f}s train, "
        f"{rec['train_cpu_s']:.0f}s CPU) | {per}")


def train_classifier(out, *, resume=False, overwrite=False, progress=True, log=None, threads=None, **kwargs):
    """Trains a CifarResNet on a (long-tailed) dataset; writes and returns the checkpoint dict (sans weights).

    ``out`` is the checkpoint path. An existing ``out`` is continued with ``resume=True`` (the recorded
    settings must match), replaced with ``overwrite=True``, and otherwise an error.
    """
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    if threads:
        torch.set_num_threads(int(threads))
    cfg = _default_config(**kwargs)
    device = torch.device(cfg["device"])

    ckpt = None
    if os.path.exists(out):
        if resume:
            ckpt = torch.load(out, map_location="cpu", weights_only=False)
            if ckpt.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"train_classifier: {out} is not a classifier checkpoint ({ckpt.get('format')!r})")
            old = ckpt["train_config"]
            diff = {k: (old.get(k), cfg[k]) for k in _RESUME_KEYS if old.get(k) != cfg[k]}
            if diff:
                raise ValueError(f"train_classifier: cannot resume {out}: settings differ (checkpoint, now): {diff}")
            if old["epochs"] != cfg["epochs"]:
                log(f"resume: epochs {old['epochs']} -> {cfg['epochs']} (the lr/DRW schedule follows the new value)")
        elif not overwrite:
            raise FileExistsError(f"train_classifier: {out} exists; pass resume=True (--resume) to continue it or "
                                  f"overwrite=True (--overwrite) to start again")

    t0 = time.time()
    train_set = get_dataset(cfg["dataset"], "train", root=cfg["root"], image_size=cfg["image_size"],
                            imbalance_ratio=cfg["imbalance_ratio"], profile=cfg["profile"], seed=cfg["seed"],
                            n_max=cfg["n_max"], download=cfg["download"])
    test_set = get_dataset(cfg["dataset"], "test", root=cfg["root"], image_size=cfg["image_size"],
                           download=cfg["download"])
    log(f"train: {train_set!r}\ntest: {test_set!r} (loaded in {time.time() - t0:.1f}s)")
    if test_set.image_shape != train_set.image_shape:
        raise ValueError(f"train_classifier: train/test shapes differ {train_set.image_shape} {test_set.image_shape}")
    K = train_set.num_classes

    torch.manual_seed(cfg["seed"])
    model = CifarResNet(K, train_set.image_shape[0], cfg["depth"], cfg["width"],
                        normed_linear=(cfg["loss"] == "ldam-drw")).to(device)
    if cfg["channels_last"]:  # ~1.5x faster convolutions on CPU (oneDNN), no loss on GPU
        model = model.to(memory_format=torch.channels_last)
    amp_dtype = AMP_DTYPES[cfg["amp"]]
    criterion = LongTailLoss(cfg["loss"], train_set.class_counts, drw_epoch=cfg["drw_epoch"]).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                          weight_decay=cfg["weight_decay"])
    state = dict(epoch=0, step=0, train_time_s=0.0, train_cpu_s=0.0, history=[], loss_sum=0.0, correct=0, seen=0)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state.update({k: ckpt.get(k, v) for k, v in state.items()})
        log(f"resumed {out} at epoch {state['epoch']} batch {state['step']} "
            f"({state['train_time_s']:.0f}s trained before)")

    def make_ckpt(finished):
        last = state["history"][-1] if state["history"] else {}
        return dict(format=CHECKPOINT_FORMAT, model_config=model.config,
                    model={k: v.detach().cpu() for k, v in model.state_dict().items()},
                    optimizer=opt.state_dict(), train_config=cfg, dataset=train_set.config,
                    test_dataset=test_set.config, classes=list(train_set.classes),
                    class_counts=train_set.class_counts, loss=cfg["loss"], imbalance_ratio=cfg["imbalance_ratio"],
                    accuracy=last.get("accuracy"), balanced_accuracy=last.get("balanced_accuracy"),
                    per_class_accuracy=last.get("per_class_accuracy"), finished=finished,
                    torch_version=torch.__version__, **state)

    n = len(train_set)
    n_batches = math.ceil(n / cfg["batch_size"])
    E = int(math.ceil(cfg["epochs"]))
    deadline = None if not cfg["max_minutes"] else time.time() + 60.0 * cfg["max_minutes"]
    last_save = time.time()
    model.train()
    stopped = False
    lr = None
    # running sums stay on the device: reading them every step would synchronise a GPU
    loss_acc = torch.zeros((), dtype=torch.float64, device=device)
    correct_acc = torch.zeros((), dtype=torch.int64, device=device)

    def flush_sums():
        state["loss_sum"] += float(loss_acc)
        state["correct"] += int(correct_acc)
        loss_acc.zero_()
        correct_acc.zero_()

    while state["epoch"] < E and not stopped:
        epoch = state["epoch"]
        order = torch.randperm(n, generator=_generator(cfg["seed"], epoch))
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=n_batches, initial=state["step"], desc=f"epoch {epoch + 1}/{E}", leave=False,
                       dynamic_ncols=True, file=sys.stderr)
        t_epoch, c_epoch = time.time(), time.process_time()
        for i in range(state["step"], n_batches):
            progress_ep = epoch + i / n_batches
            if progress_ep >= cfg["epochs"]:
                break
            lr = learning_rate(cfg["lr"], progress_ep, cfg["epochs"], cfg["lr_schedule"], cfg["warmup_epochs"])
            for g in opt.param_groups:
                g["lr"] = lr
            criterion.set_epoch(progress_ep)
            idx = order[i * cfg["batch_size"]:(i + 1) * cfg["batch_size"]]
            x = train_set.float_images_at(idx, device)
            y = train_set.labels[idx].to(device)
            x = augment_batch(x, cfg["augment"], _generator(cfg["seed"], epoch, i))
            if cfg["channels_last"]:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                logits = model(x)
            logits = logits.float()
            loss = criterion(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_acc += loss.detach().double() * len(idx)
            correct_acc += (logits.detach().argmax(1) == y).sum()
            state["seen"] += len(idx)
            state["step"] = i + 1
            if bar is not None:
                if i % 10 == 0 or i + 1 == n_batches:
                    flush_sums()
                    bar.set_postfix(loss=f"{state['loss_sum'] / state['seen']:.3f}", lr=f"{lr:.3g}",
                                    drw=criterion.reweighting, refresh=False)
                bar.update(1)
            now = time.time()
            if deadline is not None and now >= deadline:
                stopped = True
                break
            if cfg["checkpoint_every_s"] and now - last_save >= cfg["checkpoint_every_s"] and i + 1 < n_batches:
                state["train_time_s"] += now - t_epoch
                state["train_cpu_s"] += time.process_time() - c_epoch
                t_epoch, c_epoch = now, time.process_time()
                flush_sums()
                atomic_save(make_ckpt(False), out)
                last_save = time.time()
        if bar is not None:
            bar.close()
        state["train_time_s"] += time.time() - t_epoch
        state["train_cpu_s"] += time.process_time() - c_epoch
        flush_sums()
        if stopped:
            atomic_save(make_ckpt(False), out)
            log(f"stopped at the time limit ({cfg['max_minutes']} min) in epoch {epoch + 1} batch {state['step']}; "
                f"checkpoint {out} (continue with --resume)")
            break
        state["epoch"] = epoch + 1
        done = state["epoch"] >= E
        rec = dict(epoch=min(float(state["epoch"]), float(cfg["epochs"])),
                   train_loss=state["loss_sum"] / max(1, state["seen"]),
                   train_accuracy=state["correct"] / max(1, state["seen"]), lr=lr,
                   train_time_s=state["train_time_s"], train_cpu_s=state["train_cpu_s"])
        if done or (cfg["eval_every"] and state["epoch"] % cfg["eval_every"] == 0):
            t_eval = time.time()
            rec.update(evaluate(model, test_set, cfg["eval_batch_size"], device, cfg["amp"], cfg["channels_last"]))
            rec["eval_time_s"] = time.time() - t_eval
            _log_epoch(log, rec, train_set.classes)
        else:
            log(f"epoch {rec['epoch']:g}: train loss {rec['train_loss']:.4f} ({rec['train_time_s']:.0f}s train)")
        state["history"].append(rec)
        state.update(step=0, loss_sum=0.0, correct=0, seen=0)
        atomic_save(make_ckpt(done), out)
        last_save = time.time()
    result = make_ckpt(state["epoch"] >= E)
    result.pop("model")
    result.pop("optimizer")
    return result


# ------------------------------------------------------------------------------------------------ soft labels

def _file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dataset_digest(dataset):
    h = hashlib.sha256(json.dumps(dataset.config, sort_keys=True, default=str).encode())
    h.update(dataset.labels.numpy().tobytes())
    h.update(str(tuple(dataset.images.shape)).encode())
    return h.hexdigest()


def soft_labels(checkpoint, dataset=None, *, cache_dir=None, use_cache=True, batch_size=500, device="cpu",
                temperature=1.0):
    """Softmax of the classifier over ``dataset`` (default: its own training set), float32 [N, K], in dataset order.

    Cached in ``<cache_dir or checkpoint's dir>/<checkpoint name>.softlabels-<key>.pt``, key = digests of the
    checkpoint file, the dataset (config, labels, shape) and the temperature: a retrained checkpoint or another
    subset never reads stale labels.
    """
    ckpt_digest = _file_digest(checkpoint)
    model = load_classifier(checkpoint, map_location=device)
    if dataset is None:
        dataset = dataset_from_config(model.checkpoint_info["dataset"])
    if not isinstance(dataset, ImageDataset):
        raise TypeError(f"soft_labels: dataset must be an ImageDataset (from get_dataset), got {type(dataset)}")
    key = hashlib.sha256(f"{ckpt_digest}|{_dataset_digest(dataset)}|{float(temperature)!r}".encode()).hexdigest()[:20]
    d = cache_dir or os.path.dirname(os.path.abspath(checkpoint))
    path = os.path.join(d, f"{os.path.basename(checkpoint)}.softlabels-{key}.pt")
    if use_cache and os.path.exists(path):
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached.get("key") == key:
            return cached["soft_labels"]
    probs = []
    with torch.no_grad():
        for x, _ in dataset.batches(batch_size, shuffle=False, device=device):
            probs.append(torch.softmax(model(x).float() / temperature, dim=1).cpu())
    probs = torch.cat(probs) if probs else torch.zeros(0, dataset.num_classes)
    if use_cache:
        atomic_save(dict(key=key, checkpoint_sha256=ckpt_digest, soft_labels=probs, labels=dataset.labels.clone()),
                    path)
    return probs
