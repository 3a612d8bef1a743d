"""Training the classifier in the loop (CBGAN's regularizer, Softlabel-GAN's soft labels) and the annotator.

LDAM-DRW's recipe (Cao et al. 2019, ``train.py``), with its 200-epoch schedule scaled to ``epochs``: SGD
(momentum 0.9, weight decay 2e-4), linear warm-up over the first 5/200 of training, learning rate ×0.01 at
80% and ×0.0001 at 90% (``lr_schedule="step"``; or ``"cosine"``), DRW from 80% on, random crop (padding 1/8
of the side) and horizontal flip. The schedule is evaluated per iteration, so fractional points work for
runs of a few epochs.

Short CPU runs: DRW with a cosine schedule and re-weighting from ~70% of the epochs trained best on
Fashion-MNIST-LT (ρ = 100, 32×32): ResNet-32 at width 0.5, 10 epochs, bf16 autocast, one thread reached 85.9%
balanced test accuracy in ~250 CPU seconds; LDAM-DRW's cosine head lags in so few epochs.

Training runs on the shared ``TrainLoop`` (a step is a batch; resume, the time limit, the JSONL log and
atomic checkpoints are the GAN trainer's). Checkpoints are written at every epoch end, every
``checkpoint_every_s`` seconds within an epoch, and at a time limit. Each epoch's order is drawn from a
generator seeded by (seed, epoch) and each batch's augmentation from one seeded by (seed, epoch, batch), so a
resumed run follows the same data as an uninterrupted one.

Under torchrun the batch size is global: rank r trains on images r, r + W, ... of each batch of the epoch's
order (the last batch padded from the epoch's start to a multiple of W, as ``DistributedSampler`` pads) with
its own augmentation stream (seed, epoch, batch, rank); the model is DistributedDataParallel, rank 0 evaluates
and writes the checkpoint, and the epoch's loss and accuracy sums are reduced over the ranks.
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
from . import checkpoint as ckpt
from .checkpoint import save_atomic
from . import distributed as dist
from .loop import TrainLoop

CHECKPOINT_FORMAT = "cbgan_ext.classifier/1"
LR_SCHEDULES = ("step", "cosine", "constant")
AUGMENTS = ("crop-flip", "crop", "none")
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# What must agree between a checkpoint and the arguments of a resumed run.
RESUME_KEYS = ("dataset", "root", "imbalance_ratio", "profile", "selection", "seed", "image_size", "n_max", "loss",
                "width", "depth", "batch_size", "lr", "momentum", "weight_decay", "lr_schedule", "augment", "amp",
                "minority_class", "drop_fraction", "extra_sha256")


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


def default_config(**kw):
    cfg = dict(dataset="fashion-mnist", root=None, imbalance_ratio=1.0, profile="exp", selection="shuffle", seed=0,
               minority_class=0, drop_fraction=None, extra=None, extra_sha256=None,
               image_size=None, n_max=None, loss="ce", epochs=10, batch_size=128, lr=0.1, momentum=0.9,
               weight_decay=2e-4, width=1.0, depth=32, lr_schedule="step", warmup_epochs=None, drw_epoch=None,
               augment="crop-flip",
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
    if cfg["drw_epoch"] is not None:
        problem = drw_problem(cfg["loss"], cfg["drw_epoch"], E)
        if problem:
            raise ValueError(f"train_classifier: drw_epoch {problem}")
    if cfg["warmup_epochs"] is None:
        cfg["warmup_epochs"] = 5.0 / 200.0 * E
    if cfg["drw_epoch"] is None:
        cfg["drw_epoch"] = 0.8 * E
    return cfg


def drw_problem(loss, drw_epoch, epochs):
    """Why a given DRW start cannot apply (None when it can): a loss without DRW, or a start after the end."""
    if loss not in ("drw", "ldam-drw"):
        return f"is not used by loss {loss!r} (only drw and ldam-drw re-weight)"
    if drw_epoch >= epochs:
        return f"{drw_epoch:g} is not before the last epoch ({epochs:g}): re-weighting would never start"
    return None


def _log_epoch(log, rec, classes):
    per = " ".join(f"{c[:8]}={a * 100:.1f}" for c, a in zip(classes, rec["per_class_accuracy"]))
    log(f"epoch {rec['epoch']:g}: train loss {rec['train_loss']:.4f}, test acc {rec['accuracy'] * 100:.2f}%, "
        f"balanced {rec['balanced_accuracy'] * 100:.2f}% ({rec['train_time_s']:.0f}s train, "
        f"{rec['train_cpu_s']:.0f}s CPU) | {per}")


class ClassifierTrainer(TrainLoop):
    """The classifier on the shared loop: a step is one batch, an epoch end evaluates and logs; checkpoints at
    every epoch end, every ``checkpoint_every_s`` seconds and at the time limit, in the classifier checkpoint
    format (``load_classifier``) at the path ``out``, with its JSONL log at ``<out>.metrics.jsonl``."""

    resume_may_change = ()
    settings_added_later = {"selection": "shuffle", "minority_class": 0, "drop_fraction": None, "extra_sha256": None}

    def __init__(self, out, cfg, *, overwrite=False, progress=True, log=None):
        log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self.cfg, self.log = cfg, (log if dist.is_main() else (lambda s: None))
        self.overwrite = overwrite
        device = torch.device(cfg["device"])
        t0 = time.time()
        self.train_set = get_dataset(cfg["dataset"], "train", root=cfg["root"], image_size=cfg["image_size"],
                                     imbalance_ratio=cfg["imbalance_ratio"], profile=cfg["profile"],
                                     seed=cfg["seed"], n_max=cfg["n_max"], download=cfg["download"],
                                     selection=cfg["selection"], minority_class=cfg["minority_class"],
                                     drop_fraction=cfg["drop_fraction"])
        if cfg["extra"]:
            self.train_set, cfg["extra_sha256"] = _with_extra(self.train_set, cfg["extra"])
        self.test_set = get_dataset(cfg["dataset"], "test", root=cfg["root"], image_size=cfg["image_size"],
                                    download=cfg["download"])
        self.log(f"train: {self.train_set!r}\ntest: {self.test_set!r} (loaded in {time.time() - t0:.1f}s)")
        if self.test_set.image_shape != self.train_set.image_shape:
            raise ValueError(f"train_classifier: train/test shapes differ {self.train_set.image_shape} "
                             f"{self.test_set.image_shape}")
        self.n_batches = math.ceil(len(self.train_set) / cfg["batch_size"])
        steps = math.ceil(float(cfg["epochs"]) * self.n_batches - 1e-9)
        folder = os.path.dirname(os.path.abspath(out))
        super().__init__(folder, steps, seed=cfg["seed"], device=device, log_every=10 ** 9, sample_every=0,
                         eval_every=0, ckpt_every=10 ** 12, progress=progress, max_minutes=cfg["max_minutes"],
                         ckpt_every_s=cfg["checkpoint_every_s"] or None, steps_per_epoch=self.n_batches,
                         ckpt_path=out, log_path=out + ".metrics.jsonl", config_path=None, tensorboard=False)
        K = self.train_set.num_classes
        torch.manual_seed(cfg["seed"])
        self.model = CifarResNet(K, self.train_set.image_shape[0], cfg["depth"], cfg["width"],
                                 normed_linear=(cfg["loss"] == "ldam-drw")).to(device)
        if cfg["channels_last"]:  # ~1.5x faster convolutions on CPU (oneDNN), no loss on GPU
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model_step = dist.wrap(self.model, device)
        self.amp_dtype = AMP_DTYPES[cfg["amp"]]
        self.criterion = LongTailLoss(cfg["loss"], self.train_set.class_counts, drw_epoch=cfg["drw_epoch"]).to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                                   weight_decay=cfg["weight_decay"])
        self.modules, self.optimizers = {"model": self.model}, {"model": self.opt}
        self.config = {k: cfg[k] for k in RESUME_KEYS}
        self.state = dict(epoch=0, step=0, train_time_s=0.0, train_cpu_s=0.0, history=[], loss_sum=0.0, correct=0,
                          seen=0)
        # running sums stay on the device: reading them every step would synchronise a GPU
        self._loss_acc = torch.zeros((), dtype=torch.float64, device=device)
        self._correct_acc = torch.zeros((), dtype=torch.int64, device=device)
        self._order, self._order_epoch, self._lr = None, None, None
        self._mark = (time.time(), time.process_time())

    # ---- bookkeeping ----------------------------------------------------------------------------------
    def _account_time(self):
        now, cpu = time.time(), time.process_time()
        self.state["train_time_s"] += now - self._mark[0]
        self.state["train_cpu_s"] += cpu - self._mark[1]
        self._mark = (now, cpu)

    def _flush_sums(self):
        dist.all_reduce_sum(self._loss_acc)
        dist.all_reduce_sum(self._correct_acc)
        self.state["loss_sum"] += float(self._loss_acc)
        self.state["correct"] += int(self._correct_acc)
        self._loss_acc.zero_()
        self._correct_acc.zero_()

    def checkpoint(self, with_weights=True):
        last = self.state["history"][-1] if self.state["history"] else {}
        ts = self.train_set
        d = dict(format=CHECKPOINT_FORMAT, model_config=self.model.config, train_config=self.cfg, dataset=ts.config,
                 test_dataset=self.test_set.config, classes=list(ts.classes), class_counts=ts.class_counts,
                 loss=self.cfg["loss"], imbalance_ratio=self.cfg["imbalance_ratio"], accuracy=last.get("accuracy"),
                 balanced_accuracy=last.get("balanced_accuracy"), per_class_accuracy=last.get("per_class_accuracy"),
                 finished=self.step >= self.steps, torch_version=str(torch.__version__), global_step=self.step,
                 torchelastic_run_id=os.environ.get("TORCHELASTIC_RUN_ID"),
                 config=self.config, **self.state)
        if with_weights:
            d.update(model={k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                     optimizer=self.opt.state_dict(), rng=ckpt.rng_state(), best=None)
        return d

    def state_dict(self):
        self._account_time()
        self._flush_sums()
        return self.checkpoint()

    def load_state_dict(self, state):
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"train_classifier: {self.ckpt_path} is not a classifier checkpoint "
                             f"({state.get('format')!r})")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.state.update({k: state.get(k, v) for k, v in self.state.items()})
        self.step = state.get("global_step", state["epoch"] * self.n_batches + state["step"])
        self._restore_rank_state(state)
        self.log(f"resumed {self.ckpt_path} at epoch {self.state['epoch']} batch {self.state['step']} "
                 f"({self.state['train_time_s']:.0f}s trained before)")

    def saved_config(self, state):
        tc = state.get("train_config", {})
        return state.get("config") or {k: tc[k] for k in RESUME_KEYS if k in tc}

    def try_resume(self):
        if self.overwrite:
            self._truncate_log(0)
            return False
        return super().try_resume()

    # ---- the step and the epoch -----------------------------------------------------------------------
    def train_step(self, step):
        cfg, ts = self.cfg, self.train_set
        epoch, i = divmod(step, self.n_batches)
        if self._order_epoch != epoch:
            self._order = torch.randperm(len(ts), generator=_generator(cfg["seed"], epoch))
            self._order_epoch = epoch
        progress_ep = epoch + i / self.n_batches
        self._lr = learning_rate(cfg["lr"], progress_ep, cfg["epochs"], cfg["lr_schedule"], cfg["warmup_epochs"])
        for g in self.opt.param_groups:
            g["lr"] = self._lr
        self.criterion.set_epoch(progress_ep)
        idx = batch = self._order[i * cfg["batch_size"]:(i + 1) * cfg["batch_size"]]
        aug_seed = (cfg["seed"], epoch, i)
        if self.world_size > 1:
            pad = -len(batch) % self.world_size
            idx = torch.cat([batch, self._order[:pad]])[self.rank::self.world_size]
            aug_seed += (self.rank,)
        x = ts.float_images_at(idx, self.device)
        y = ts.labels[idx].to(self.device)
        x = augment_batch(x, cfg["augment"], _generator(*aug_seed))
        if cfg["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                            enabled=self.amp_dtype is not None):
            logits = self.model_step(x)
        logits = logits.float()
        loss = self.criterion(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self._loss_acc += loss.detach().double() * len(idx)
        self._correct_acc += (logits.detach().argmax(1) == y).sum()
        self.state["seen"] += len(idx) * self.world_size  # as the reduced sums: padded rows included
        self.state["step"] = i + 1
        return {}

    def on_epoch_end(self, epoch):
        self._account_time()
        self._flush_sums()
        st, cfg = self.state, self.cfg
        st["epoch"] = epoch + 1
        done = self.step >= self.steps
        rec = dict(epoch=min(float(st["epoch"]), float(cfg["epochs"])),
                   train_loss=st["loss_sum"] / max(1, st["seen"]), train_accuracy=st["correct"] / max(1, st["seen"]),
                   lr=self._lr, train_time_s=st["train_time_s"], train_cpu_s=st["train_cpu_s"])
        due = done or (cfg["eval_every"] and st["epoch"] % cfg["eval_every"] == 0)
        if due and self.is_main:  # rank 0 evaluates
            t_eval = time.time()
            rec.update(evaluate(self.model, self.test_set, cfg["eval_batch_size"], self.device, cfg["amp"],
                                cfg["channels_last"]))
            rec["eval_time_s"] = time.time() - t_eval
            _log_epoch(self.log, rec, self.train_set.classes)
        else:
            self.log(f"epoch {rec['epoch']:g}: train loss {rec['train_loss']:.4f} ({rec['train_time_s']:.0f}s train)")
        st["history"].append(rec)
        st.update(step=0, loss_sum=0.0, correct=0, seen=0)
        self._mark = (time.time(), time.process_time())  # evaluation time is not training time
        return rec


def _with_extra(train_set, path):
    """The training set plus the images of ``path`` (a dict of uint8 ``images`` [M, C, H, W] and ``labels``
    [M], e.g. generated minority images), and the file's digest (recorded, so a resume on another file is
    refused)."""
    extra = ckpt.load(path)
    x, y = extra.get("images"), extra.get("labels")
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or tuple(x.shape[1:]) != train_set.image_shape:
        shape = ", ".join(map(str, train_set.image_shape))
        raise ValueError(f"train_classifier: {path}: images must be uint8 [M, {shape}]"
                         f", got {getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}")
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],) or (len(y) and not 0 <= int(y.min()) <= int(y.max())
                                                                        < train_set.num_classes):
        raise ValueError(f"train_classifier: {path}: labels must be [{x.shape[0]}] in [0, {train_set.num_classes})")
    merged = ImageDataset(torch.cat([train_set.images, x]), torch.cat([train_set.labels, y.to(torch.int64)]),
                          train_set.num_classes, train_set.classes, None,
                          {**train_set.config, "extra": os.path.abspath(path)})
    return merged, file_digest(path)


def train_classifier(out, *, resume=False, overwrite=False, progress=True, log=None, threads=None,
                     deterministic=False, **kwargs):
    """Trains a CifarResNet on a (long-tailed) dataset; writes and returns the checkpoint dict (sans weights).

    ``out`` is the checkpoint path. An existing ``out`` is continued with ``resume=True`` (the recorded
    settings must match), replaced with ``overwrite=True``, and otherwise an error. On a GPU, cuDNN's default
    algorithms are not deterministic: two runs, and a run and its resumption, agree only with
    ``deterministic=True`` (torch.use_deterministic_algorithms; process-wide, slower).
    """
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    if threads:
        torch.set_num_threads(int(threads))
    if deterministic:
        ckpt.use_deterministic_algorithms()
    cfg = default_config(**kwargs)
    if resume and not os.path.exists(out):
        raise FileNotFoundError(f"train_classifier: nothing to resume, {out} does not exist")
    if os.path.exists(out):
        if resume:
            old = ckpt.load(out)
            if old.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"train_classifier: {out} is not a classifier checkpoint ({old.get('format')!r})")
            if old["train_config"]["epochs"] != cfg["epochs"]:
                log(f"resume: epochs {old['train_config']['epochs']} -> {cfg['epochs']} (the lr/DRW schedule "
                    "follows the new value)")
        elif not overwrite:
            raise FileExistsError(f"train_classifier: {out} exists; pass resume=True (--resume) to continue it or "
                                  f"overwrite=True (--overwrite) to start again")
    trainer = ClassifierTrainer(out, cfg, overwrite=overwrite or not resume, progress=progress, log=log)
    trainer.run()
    if trainer.stopped_early:
        log(f"stopped at the time limit ({cfg['max_minutes']} min) in epoch {trainer.state['epoch'] + 1} batch "
            f"{trainer.state['step']}; checkpoint {out} (continue with --resume)")
    return trainer.checkpoint(with_weights=False)


# ------------------------------------------------------------------------------------------------ soft labels

def file_digest(path):
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
    ckpt_digest = file_digest(checkpoint)
    model = load_classifier(checkpoint, map_location=device)
    if dataset is None:
        dataset = dataset_from_config(model.checkpoint_info["dataset"])
    if not isinstance(dataset, ImageDataset):
        raise TypeError(f"soft_labels: dataset must be an ImageDataset (from get_dataset), got {type(dataset)}")
    key = hashlib.sha256(f"{ckpt_digest}|{_dataset_digest(dataset)}|{float(temperature)!r}".encode()).hexdigest()[:20]
    d = cache_dir or os.path.dirname(os.path.abspath(checkpoint))
    path = os.path.join(d, f"{os.path.basename(checkpoint)}.softlabels-{key}.pt")
    if use_cache and os.path.exists(path):
        cached = ckpt.load(path, what="soft-label cache")
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
