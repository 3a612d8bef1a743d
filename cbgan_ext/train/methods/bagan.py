"""BAGAN (Mariani et al. 2018) and the two baselines of its paper, on BAGAN's networks (``models/bagan.py``).

* ``bagan``: three stages in one run directory, each resumable. (1) An autoencoder G(E(x)) trained with MSE on
  every training image (``autoencoder.pt``, log ``autoencoder.jsonl``). (2) Per class, the mean and covariance
  of the encoder's codes of that class's training images, fitted once (``gaussians.pt``, summary in
  ``gaussians.json``); a class with no more images than latent dimensions has a singular covariance and gets
  (1 − s)Σ_c + s·diag(pooled within-class Σ), s = ``latent_shrinkage``. (3) Adversarial: G starts as the
  decoder and draws its latent from the class Gaussians; D's trunk starts as the encoder's, its (K + 1)-way
  head at random. D step: B reals with their labels and ⌈B/K⌉ fakes labelled K, one cross-entropy over the
  concatenation (the released code's batch); G step: B + ⌈B/K⌉ fakes of sampled classes, cross-entropy toward
  their class through D (only G steps). Classes of fakes (``class_sampling`` for G's, ``d_class_sampling`` for
  D's, the released code's gratio and dratio): uniform, the data's shares, or the released code's "rebalance".
* ``acgan``: the same networks without the autoencoder; G(z ⊙ embedding(y)) (``acgan_g="multiply"``, Keras'
  example) or G([z, onehot(y)]) (``"concat"``), D with a real/fake logit and
  an auxiliary classifier: D loss BCE(real/fake) + CE(class), G loss BCE + CE (Odena et al.). The class term of
  D's loss is on the real images only by default, as in Keras' ACGAN example (whose G this is);
  ``acgan_aux="real+fake"`` adds the fakes' class term, as the paper.
* ``minority-gan``: the paper's simple GAN, unconditional, on the images of one class only (``target_class``,
  by default the dataset's minority class), non-saturating loss; its fakes are judged as that class.

Defaults are the released code's: latent 100, Adam lr 5e-5 with β1 0.5, batch 128, no spectral norm on D.
"""
import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from ...models.bagan import BAGANEncoder
from .. import checkpoint as ckpt
from .. import distributed as dist
from ...data import dataset_minority_classes
from ..loop import ConfigMismatchError, TrainLoop
from ..streams import GeneratorState, stream_seed
from .base import Method, register

_DEFAULTS = dict(arch="bagan", z_dim=100, lr=5e-5, beta1=0.5, beta2=0.999, batch_size=128, ema_start=10 ** 9,
                 ema_decay=0.9999)


class _BAGANFamily(Method):
    defaults = _DEFAULTS
    ssim_eval = True

    def check(self, dataset, settings):
        if settings["arch"] != "bagan":
            raise ValueError(f"method {self.name!r}: arch must be 'bagan' (BAGAN's networks), got {settings['arch']!r}")


@register
class BAGAN(_BAGANFamily):
    name = "bagan"
    title = "autoencoder-initialised GAN, class-Gaussian latents, (K+1)-class D (BAGAN)"
    paper = "Mariani et al. 2018 (BAGAN)"
    conditional = True
    d_head = "classes+1"
    loss = "classes+1"
    pre_stages = ("autoencoder", "class Gaussians")
    scalar_d_outputs = False  # a (K + 1)-way D
    option_groups = ("autoencoder", "class_sampling")

    def build(self, arch, *, channels, image_size, width, z_dim, d_sn=None):
        from ...models import build_gan
        return build_gan(arch, channels=channels, image_size=image_size, width=width, z_dim=z_dim,
                         num_classes=self.num_classes, conditional_g=False, g_gaussians=True, d_head="classes+1",
                         d_spectral_norm=d_sn)

    def check(self, dataset, settings):
        super().check(dataset, settings)
        counts, z = dataset.class_counts, int(settings["z_dim"])
        thin = [k for k, n in enumerate(counts) if n <= z]
        if thin and settings["latent_shrinkage"] == 0:
            raise ValueError(f"method 'bagan': classes {thin} have {[counts[k] for k in thin]} images, no more than "
                             f"the {z} latent dimensions, so their code covariance is singular: set latent_shrinkage "
                             "(--latent-shrinkage) > 0 or a smaller z_dim")
        if any(n < 1 for n in counts):
            raise ValueError(f"method 'bagan': every class needs training images, got {counts}")

    def fake_batch_sizes(self, batch):
        f = math.ceil(batch / self.num_classes)
        return f, batch + f

    def d_loss(self, D, real, real_labels, fake, fake_labels):
        logits = D(torch.cat([real, fake]))
        target = torch.cat([real_labels, torch.full_like(fake_labels, self.num_classes)])
        return F.cross_entropy(logits, target), {}

    def g_loss(self, D, real, real_labels, fake, fake_labels):
        return F.cross_entropy(D(fake), fake_labels), {}

    def prepare(self, trainer):
        out = trainer.out
        enc = BAGANEncoder(trainer.images.shape[1], trainer.images.shape[-1], trainer.settings["width"],
                           trainer.z_dim, spectral_norm=bool(trainer.settings["d_sn"]))
        ae = AutoencoderStage(trainer, enc)
        ae.run()
        path = os.path.join(out, "gaussians.pt")
        fit = None
        if dist.is_main() and os.path.exists(path):
            fit = ckpt.load(path)
            if fit.get("autoencoder_step") != ae.step or fit.get("shrinkage") != trainer.settings["latent_shrinkage"]:
                fit = None  # fitted on another encoder: fit again
        if dist.world_size() > 1:
            fit = dist.broadcast_object(fit)
        if fit is None:
            fit = fit_class_gaussians(enc.to(trainer.device), trainer.images, trainer.labels, self.num_classes,
                                      shrinkage=trainer.settings["latent_shrinkage"], device=trainer.device)
            fit["autoencoder_step"] = ae.step
            if dist.is_main():
                ckpt.save_atomic(fit, path)
                summary = {k: v for k, v in fit.items() if k not in ("means", "covariances", "cholesky")}
                with open(os.path.join(out, "gaussians.json.tmp"), "w") as f:
                    json.dump(summary, f, indent=1)
                os.replace(os.path.join(out, "gaussians.json.tmp"), os.path.join(out, "gaussians.json"))
        trainer.G.set_class_gaussians(fit["means"].float(), fit["cholesky"].float())
        trainer.D.trunk.load_state_dict(enc.trunk.state_dict())
        trainer.ema.update(trainer.G, -1)  # the EMA starts from the initialised G


@register
class ACGAN(_BAGANFamily):
    name = "acgan"
    title = ("ACGAN on BAGAN's networks: G(z * embedding(y)) or G([z, onehot(y)]), D real/fake + auxiliary "
             "classifier (BAGAN's baseline)")
    paper = "Odena et al. 2017; BAGAN §5"
    conditional = True
    d_head = "aux-classifier"
    loss = "acgan"
    scalar_d_outputs = False  # its own d_loss: real/fake logit and auxiliary classifier
    option_groups = ("acgan", "class_sampling")

    def build(self, arch, *, channels, image_size, width, z_dim, d_sn=None):
        from ...models import build_gan
        return build_gan(arch, channels=channels, image_size=image_size, width=width, z_dim=z_dim,
                         num_classes=self.num_classes, conditional_g=True, d_head=self.d_head, d_spectral_norm=d_sn,
                         g_class_input=self.settings.get("acgan_g", "multiply"))

    def d_loss(self, D, real, real_labels, fake, fake_labels):
        src, cls = D(torch.cat([real, fake]))
        n = real.shape[0]
        is_real = torch.cat([torch.ones(n, device=src.device), torch.zeros(fake.shape[0], device=src.device)])
        adv = F.binary_cross_entropy_with_logits(src, is_real)
        if self.settings.get("acgan_aux", "real") == "real":
            # Keras' example: fakes do not train the classifier, so G cannot teach D its own class textures
            aux = F.cross_entropy(cls[:n], real_labels)
        else:
            aux = F.cross_entropy(cls, torch.cat([real_labels, fake_labels]))
        return adv + aux, {"aux_d": aux.detach().item()}

    def g_loss(self, D, real, real_labels, fake, fake_labels):
        src, cls = D(fake)
        adv = F.binary_cross_entropy_with_logits(src, torch.ones_like(src))
        aux = F.cross_entropy(cls, fake_labels)
        return adv + aux, {"aux_g": aux.detach().item()}


@register
class MinorityGAN(_BAGANFamily):
    name = "minority-gan"
    title = "unconditional GAN on BAGAN's networks trained on one (minority) class alone (BAGAN's baseline)"
    paper = "BAGAN §5 (the simple GAN)"
    option_groups = ("target_class",)
    d_head = "scalar"
    loss = "nonsaturating"

    def target(self):
        t = int(self.settings.get("target_class", -1))
        if t >= 0:
            return t
        minority = dataset_minority_classes(self.settings.get("dataset"))
        return minority[0] if len(minority) == 1 else None

    def check(self, dataset, settings):
        super().check(dataset, settings)
        t = int(settings["target_class"])
        if t < 0:
            minority = dataset_minority_classes(getattr(dataset, "config", None))
            if len(minority) != 1:
                raise ValueError("method 'minority-gan': give the class to train on (target_class, --target-class): "
                                 f"the dataset names {len(minority)} minority classes {list(minority)}")
            t = minority[0]
        if t >= self.num_classes:
            raise ValueError(f"method 'minority-gan': target_class must be in [0, {self.num_classes}), got {t}")
        if dataset.class_counts[t] < 1:
            raise ValueError(f"method 'minority-gan': class {t} has no training images")
        self.settings["target_class"] = t

    def training_set(self, images, labels):
        keep = labels == self.target()
        return images[keep], labels[keep]

    def eval_label(self):
        return self.target()


class _Autoencoder(torch.nn.Module):
    def __init__(self, E, G):
        super().__init__()
        self.E, self.G = E, G

    def forward(self, x):
        return self.G.decode(self.E(x))


class AutoencoderStage(TrainLoop):
    """BAGAN's stage 1: E and the GAN's G (as decoder) trained with MSE, Adam at ``ae_lr`` and ``ae_beta1`` (by
    default the GAN's lr and β1, as the released code), on batches
    drawn like the GAN's (``ae_steps`` steps of ``batch_size``). Its own checkpoint, log and config."""

    def __init__(self, trainer, encoder):
        s = trainer.settings
        super().__init__(trainer.out, s["ae_steps"], seed=s["seed"], device=trainer.device, log_every=s["log_every"],
                         sample_every=0, eval_every=0, ckpt_every=s["ckpt_every"], progress=trainer.progress,
                         ckpt_path=os.path.join(trainer.out, "autoencoder.pt"),
                         log_path=os.path.join(trainer.out, "autoencoder.jsonl"), config_path="autoencoder.json",
                         tensorboard=False)
        self.trainer, self.E = trainer, encoder.to(trainer.device)
        self.modules = {"E": self.E, "G": trainer.G}
        self.AE_step = _Autoencoder(self.E, trainer.G)
        params = list(self.E.parameters()) + list(trainer.G.parameters())
        lr = s["lr"] if s.get("ae_lr") is None else s["ae_lr"]
        beta1 = s["beta1"] if s.get("ae_beta1") is None else s["ae_beta1"]
        self.optimizers = {"AE": torch.optim.Adam(params, lr=lr, betas=(beta1, s["beta2"]))}
        self.data_rng = GeneratorState(stream_seed(s["seed"], 4, self.rank))
        self.extra_state = {"data_rng": self.data_rng}
        self.per_rank_state = ("data_rng",)
        self.config = {k: trainer.config[k] for k in ("method", "arch", "width", "z_dim", "batch_size", "lr", "beta1",
                                                      "beta2", "d_sn", "seed", "image_shape", "class_counts",
                                                      "dataset")}
        # "lr" and "beta1" are the autoencoder's own (the GAN's before ae_lr existed): the GAN stage's may differ
        self.config.update(ae_steps=s["ae_steps"], lr=lr, beta1=beta1)
        self.resume_may_change = ("ae_steps",)

    def try_resume(self):
        resumed = super().try_resume()
        if self.world_size > 1 and self.step < self.steps:  # G would sit in two DistributedDataParallel wrappers
            raise ValueError("bagan: the autoencoder stage runs in one process: run `cbgan-ext train ... --steps 0` "
                             "without torchrun first, then resume the run under torchrun")
        if self.step > self.steps:
            raise ConfigMismatchError(f"{self.ckpt_path} holds {self.step} autoencoder steps, more than ae_steps="
                                      f"{self.steps}: the Gaussians were fitted on that encoder; use --ae-steps "
                                      f"{self.step} or more, or another --out")
        return resumed

    def train_step(self, step):
        t = self.trainer
        idx = torch.randint(0, t.images.shape[0], (t.local_batch,), generator=self.data_rng.gen)
        x = t.images[idx].to(self.device, non_blocking=True)
        rec = self.AE_step(x)
        loss = F.mse_loss(rec, x)
        opt = self.optimizers["AE"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss_ae": loss.detach().item()}


@torch.no_grad()
def fit_class_gaussians(encoder, images, labels, num_classes, *, shrinkage=0.1, batch=500, device="cpu"):
    """Per class: the mean and covariance (unbiased, as numpy.cov) of the encoder's codes (eval mode), in
    float64. Classes with n_c ≤ latent dimensions (singular Σ_c) get (1 − s)Σ_c + s·D, D the diagonal of the
    pooled within-class covariance (s = 1 for a class of one image). Returns means, covariances, Cholesky
    factors and a record of what was done."""
    was = encoder.training
    encoder.eval()
    codes = torch.cat([encoder(images[i:i + batch].to(device)).double().cpu() for i in range(0, len(images), batch)])
    encoder.train(was)
    if not torch.isfinite(codes).all():
        bad = int((~torch.isfinite(codes).all(1)).sum())
        raise ValueError(f"fit_class_gaussians: the encoder gives non-finite codes for {bad} images (a diverged "
                         "autoencoder?): no Gaussian can be fitted; train it again with a lower lr")
    d = codes.shape[1]
    means = torch.zeros(num_classes, d, dtype=torch.float64)
    covs = torch.zeros(num_classes, d, d, dtype=torch.float64)
    counts = torch.bincount(labels.cpu(), minlength=num_classes).tolist()
    centred = []
    for k in range(num_classes):
        z = codes[labels.cpu() == k]
        if len(z):
            means[k] = z.mean(0)
            centred.append(z - means[k])
        if len(z) >= 2:
            covs[k] = torch.from_numpy(np.cov(z.numpy(), rowvar=False)).reshape(d, d)
    pooled = torch.cat(centred)
    pooled_var = (pooled.pow(2).sum(0) / max(len(pooled) - num_classes, 1)).clamp_(min=1e-12)
    target = torch.diag(pooled_var)
    chols, record = torch.zeros_like(covs), []
    for k in range(num_classes):
        n = counts[k]
        s = 0.0 if n > d else (1.0 if n < 2 else float(shrinkage))
        cov = (1 - s) * covs[k] + s * target
        L, info = torch.linalg.cholesky_ex(cov)
        jitter = 0.0
        for _ in range(12):  # rounding can leave a full-rank estimate semi-definite: the smallest nudge that works
            if int(info) == 0:
                break
            jitter = max(jitter * 10, 1e-10 * float(pooled_var.mean()))
            L, info = torch.linalg.cholesky_ex(cov + jitter * torch.eye(d, dtype=cov.dtype))
        if int(info) != 0:
            raise ValueError(f"fit_class_gaussians: the covariance of class {k} is not positive definite even with "
                             f"a jitter of {jitter:.3g}")
        covs[k], chols[k] = cov, L
        record.append({"class": k, "images": n, "shrinkage": s, "jitter": jitter,
                       "min_eigenvalue": float(torch.linalg.eigvalsh(cov)[0])})
    return {"means": means, "covariances": covs, "cholesky": chols, "shrinkage": float(shrinkage),
            "latent_dim": d, "classes": record}
