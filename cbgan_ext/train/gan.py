"""Unconditional GAN trainer with the relativistic loss (CBGAN paper Eqs. 2-3), for two methods:

* ``gan``: the SNDCGAN / SNResGAN baseline;
* ``cbgan``: the same plus the class-balancing regularizer on a frozen pretrained classifier, applied to
  the fakes (before any augmentation) in the generator step only: L_G = Eq. 3 + reg(C(G(z))) (Eq. 8).

Defaults are the paper's (supplementary Table 6, §1.4.1): Adam lr 2e-4, betas (0.5, 0.999), one D step
per G step, λ by imbalance ratio (10 / 7.5 / 5 for ρ = 100 / 10 / 1), α = 0.5, β = 1, a cycle of 2000
steps, EMA of G with decay 0.9999 from step 20k. Short CPU runs need a shorter cycle (``cycle``).
"""
import math
import os

import torch
import torch.nn.functional as F
import torchvision

from ..metrics import ClassifierFeatures, FeatureStats, class_histogram, frechet_distance, kl_to_uniform
from ..models import build_gan
from ..nn import CBRegularizer
from . import checkpoint as ckpt
from .loop import EMA, TrainLoop

METHODS = ("gan", "cbgan")
PAPER_LAMBDA = {100.0: 10.0, 10.0: 7.5, 1.0: 5.0}  # supplementary Table 1 (CIFAR-10)


def paper_lambda(imbalance_ratio):
    """The supplementary's λ for the nearest listed imbalance ratio (log scale)."""
    r = max(float(imbalance_ratio), 1.0)
    return PAPER_LAMBDA[min(PAPER_LAMBDA, key=lambda k: abs(math.log(k) - math.log(r)))]


class GeneratorState:
    """A torch.Generator with state_dict/load_state_dict, so the loop checkpoints it."""

    def __init__(self, seed, device="cpu"):
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(int(seed))

    def state_dict(self):
        return {"state": self.gen.get_state()}

    def load_state_dict(self, d):
        self.gen.set_state(d["state"])


def relativistic_d_loss(d_real, d_fake):
    """Eq. 2: −E[log σ(D(x) − D(G(z)))]."""
    return F.softplus(-(d_real - d_fake)).mean()


def relativistic_g_loss(d_fake, d_real):
    """Eq. 3: −E[log σ(D(G(z)) − D(x))]."""
    return F.softplus(-(d_fake - d_real)).mean()


class GANTrainer(TrainLoop):
    def __init__(self, dataset, out, *, method="cbgan", steps=10000, arch="sndcgan", width=1.0, z_dim=128,
                 batch_size=64, lr=2e-4, betas=(0.5, 0.999), classifier=None, annotator=None, lam=None,
                 alpha=0.5, beta=None, cycle=2000, weighting="paper", ema_decay=0.9999, ema_start=20000,
                 eval_samples=2000, device="cpu", seed=0, deterministic=False, **loop_kw):
        if method not in METHODS:
            raise ValueError(f"GANTrainer: method must be one of {METHODS}, got {method!r}")
        if method == "cbgan" and classifier is None:
            raise ValueError("GANTrainer: method 'cbgan' needs the pretrained classifier (classifier=...)")
        loop_kw.setdefault("select_key", "fd" if annotator is not None else None)
        super().__init__(out, steps, seed=seed, device=device, **loop_kw)
        ckpt.seed_everything(seed, deterministic)
        self.dataset, self.method = dataset, method
        self.num_classes = len(dataset.class_counts)
        x0, _ = dataset[0]
        channels, size = x0.shape[0], x0.shape[-1]
        self.G, self.D = build_gan(arch, channels=channels, image_size=size, width=width, z_dim=z_dim)
        self.G.to(self.device)
        self.D.to(self.device)
        self.z_dim, self.batch_size = z_dim, int(batch_size)
        self.modules = {"G": self.G, "D": self.D}
        self.optimizers = {"G": torch.optim.Adam(self.G.parameters(), lr=lr, betas=betas),
                           "D": torch.optim.Adam(self.D.parameters(), lr=lr, betas=betas)}
        self.ema = EMA(self.G, ema_decay, ema_start)
        self.data_rng = GeneratorState(seed + 1)
        self.noise_rng = GeneratorState(seed + 2, self.device)
        self.extra_state = {"data_rng": self.data_rng, "noise_rng": self.noise_rng}
        self.classifier = None if classifier is None else classifier.to(self.device).eval().requires_grad_(False)
        self.reg = None
        if method == "cbgan":
            if lam is None:
                rho = getattr(dataset, "imbalance_ratio", None) or getattr(dataset, "config", {}).get("imbalance_ratio")
                lam = paper_lambda(rho or 1.0)
            self.reg = CBRegularizer(self.num_classes, lam, alpha=alpha, beta=beta, update_every=cycle,
                                     weighting=weighting).to(self.device)
            self.extra_state["reg"] = self.reg
        self.annotator = None if annotator is None else annotator.to(self.device).eval()
        self.eval_samples = int(eval_samples)
        self._real_stats = None
        self.images = self._stack_dataset(dataset)
        self.config = dict(method=method, steps=steps, arch=arch, width=width, z_dim=z_dim, batch_size=batch_size,
                           lr=lr, betas=list(betas), lam=None if self.reg is None else self.reg.lam, alpha=alpha,
                           beta=beta, cycle=cycle, weighting=weighting, ema_decay=ema_decay, ema_start=ema_start,
                           seed=seed, num_classes=self.num_classes, image_shape=list(x0.shape),
                           class_counts=[int(c) for c in dataset.class_counts],
                           dataset=getattr(dataset, "config", None))

    @staticmethod
    def _stack_dataset(dataset):
        if hasattr(dataset, "float_images"):  # cbgan_ext.data's in-memory datasets
            return dataset.float_images()
        images = getattr(dataset, "images", None)
        if isinstance(images, torch.Tensor) and images.dtype.is_floating_point:
            return images
        return torch.stack([dataset[i][0] for i in range(len(dataset))])

    def _noise(self, n):
        return torch.randn(n, self.z_dim, device=self.device, generator=self.noise_rng.gen)

    def _real_batch(self):
        idx = torch.randint(0, self.images.shape[0], (self.batch_size,), generator=self.data_rng.gen)
        return self.images[idx].to(self.device, non_blocking=True)

    def train_step(self, step):
        G, D = self.G, self.D
        opt_g, opt_d = self.optimizers["G"], self.optimizers["D"]
        real = self._real_batch()
        # discriminator step, Eq. 2
        with torch.no_grad():
            fake = G(self._noise(self.batch_size))
        loss_d = relativistic_d_loss(D(real), D(fake))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        # generator step, Eq. 3 (+ λ L_reg, Eq. 8)
        fake = G(self._noise(self.batch_size))
        with torch.no_grad():
            d_real = D(real)
        loss_g = relativistic_g_loss(D(fake), d_real)
        metrics = {"loss_d": loss_d.item(), "loss_g": loss_g.detach().item()}
        if self.reg is not None:
            reg = self.reg(self.classifier(fake))
            loss_g = loss_g + reg
            metrics["reg"] = reg.detach().item()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if self.reg is not None:
            self.reg.step()
        self.ema.update(G, step)
        return metrics

    # ---- sampling and evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, n, generator=None, batch=500, use_ema=True):
        G = self.ema.model if use_ema else self.G
        G.eval()
        out = []
        for i in range(0, n, batch):
            m = min(batch, n - i)
            z = torch.randn(m, self.z_dim, generator=generator).to(self.device)
            out.append(G(z).cpu())
        return torch.cat(out)

    def sample_grid(self, path):
        g = torch.Generator().manual_seed(1234)  # the same z every time: grids are comparable across steps
        x = self.generate(64, generator=g)
        torchvision.utils.save_image(x, path, nrow=8, normalize=True, value_range=(-1, 1))

    @torch.no_grad()
    def evaluate(self):
        if self.annotator is None:
            return {}
        g = torch.Generator().manual_seed(4321)  # eval draws never touch the training RNG streams
        fakes = self.generate(self.eval_samples, generator=g)
        return evaluate_samples(fakes, self.annotator, self.num_classes, self.real_stats())

    def real_stats(self):
        if self._real_stats is None:
            feats = ClassifierFeatures(self.annotator)
            n = min(self.images.shape[0], max(self.eval_samples, 2000))
            idx = torch.randperm(self.images.shape[0], generator=torch.Generator().manual_seed(99))[:n]
            self._real_stats = FeatureStats(batched(feats, self.images[idx]))
        return self._real_stats


def batched(fn, images, batch=500):
    import numpy as np
    return np.concatenate([fn(images[i:i + batch]) for i in range(0, images.shape[0], batch)])


@torch.no_grad()
def annotate(annotator, images, batch=500):
    dev = next(annotator.parameters()).device
    return torch.cat([annotator(images[i:i + batch].to(dev)).argmax(1).cpu() for i in range(0, len(images), batch)])


@torch.no_grad()
def evaluate_samples(fakes, annotator, num_classes, real_stats):
    """The papers' balance and quality metrics of generated images: the annotator's class histogram, its
    KL to uniform, and the Fréchet distance on the annotator's features (FD-annotator)."""
    hist = class_histogram(annotate(annotator, fakes), num_classes)
    fd = frechet_distance(FeatureStats(batched(ClassifierFeatures(annotator), fakes)), real_stats)
    return {"kl": kl_to_uniform(hist), "fd": fd, "fd_name": "FD-annotator", "histogram": hist.tolist()}


def _run_checkpoint(run_dir, checkpoint):
    path = os.path.join(run_dir, "best.pt" if checkpoint == "best" else "checkpoint.pt")
    if checkpoint == "best" and not os.path.exists(path):
        path = os.path.join(run_dir, "checkpoint.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"cbgan-ext: no checkpoint in {run_dir} (looked for best.pt and checkpoint.pt)")
    return ckpt.load(path)


def load_generator(run_dir, checkpoint="best", device="cpu"):
    """(EMA generator in eval mode, z_dim) of a ``cbgan-ext train`` run."""
    state = _run_checkpoint(run_dir, checkpoint)
    c = state["config"]
    shape = c["image_shape"]
    G, _ = build_gan(c["arch"], channels=shape[0], image_size=shape[-1], width=c["width"], z_dim=c["z_dim"])
    G.load_state_dict(state["ema"] if state.get("ema") is not None else state["modules"]["G"])
    return G.to(device).eval(), c["z_dim"]


@torch.no_grad()
def evaluate_run(run_dir, checkpoint="best", annotator=None, n=10000, fid="auto", device="cpu", seed=0):
    """The metrics of a run: annotator histogram, KL to uniform, FD-annotator, and FID (clean-fid's
    Inception) when requested or when its weights are available (fid="auto")."""
    from ..data import dataset_from_config
    from ..metrics import InceptionFeatures, inception_available
    from ..models.classifier import load_classifier
    state = _run_checkpoint(run_dir, checkpoint)
    c = state["config"]
    ann_path = annotator or c.get("annotator")
    if not ann_path:
        raise ValueError("cbgan-ext eval: the run records no annotator; pass --annotator")
    ann = load_classifier(ann_path, map_location=device)
    G, z_dim = load_generator(run_dir, checkpoint, device)
    g = torch.Generator().manual_seed(seed)
    fakes = torch.cat([G(torch.randn(min(500, n - i), z_dim, generator=g).to(device)).cpu() for i in range(0, n, 500)])
    if "dataset" not in c:
        raise ValueError(f"cbgan-ext eval: {run_dir} records no dataset config")
    real = dataset_from_config(c["dataset"], split="test", imbalance_ratio=1.0).float_images()
    real_stats = FeatureStats(batched(ClassifierFeatures(ann), real))
    res = evaluate_samples(fakes, ann, len(c["class_counts"]), real_stats)
    res.update(step=state["step"], checkpoint=checkpoint, n=n)
    if fid == "inception" or (fid == "auto" and inception_available()):
        inc = InceptionFeatures(device=device)
        res["fid"] = frechet_distance(FeatureStats(batched(inc, fakes, 100)), FeatureStats(batched(inc, real, 100)))
    return res
