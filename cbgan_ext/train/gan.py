"""The GAN trainer: one loop for every method of ``cbgan_ext.train.methods``.

``GANTrainer(dataset, out, method=name, **settings)``: the method builds G and D and computes the losses;
the loop owns the data and noise streams, the optimizers (Adam, one D step per G step), the EMA of G, the
optional CB regularizer on the fakes (CBGAN's Eq. 8: L_G + reg(C(G(z))), fakes before any augmentation,
generator step only), evaluation against the balanced test split, checkpoints and resume. Settings, their
defaults and their checks are ``cbgan_ext.train.options.OPTIONS``.

Under torchrun the batch size is global: each rank draws ``batch_size / world_size`` real images and latents
from its own streams (rank 0's are the single-process streams), G and D are DistributedDataParallel, and the
CB regularizer's statistics are global (``CBRegularizer``).
"""
import hashlib
import math
import os
from types import SimpleNamespace
from typing import Optional

import torch
import torchvision

from ..nn import CBRegularizer, GroupSpectralRegularizer, LeCamRegularizer
from ..nn.gan_regularizers import class_conditional_bn_layers
from ..ops.diff_augment import diff_augment, parse_policy
from . import checkpoint as ckpt
from . import distributed as dist
from . import options as opts
from .evaluate import Evaluator, balanced_test_split, generate, lpips_scores
from .losses import relativistic_d_loss, relativistic_g_loss  # noqa: F401  (re-exported)
from .loop import EMA, TrainLoop
from .methods import get_method, method_names
from .streams import GeneratorState, stream_seed
from ..data import dataset_minority_classes

PAPER_LAMBDA = {100.0: 10.0, 10.0: 7.5, 1.0: 5.0}  # supplementary Table 1 (CIFAR-10)
# Settings that change what is logged or evaluated, not the weights: a resume may change them. The soft labels'
# path is a name only; their content is pinned by soft_labels_sha256.
_LOOP_ONLY = ("steps", "annotator", "soft_labels", "max_minutes", "eval_every", "eval_samples", "sample_every",
              "ckpt_every", "log_every", "fid")


def paper_lambda(imbalance_ratio):
    """The supplementary's λ for the nearest listed imbalance ratio (log scale)."""
    r = max(float(imbalance_ratio), 1.0)
    return PAPER_LAMBDA[min(PAPER_LAMBDA, key=lambda k: abs(math.log(k) - math.log(r)))]


def _dataset_imbalance(dataset):
    return getattr(dataset, "imbalance_ratio", None) or (getattr(dataset, "config", None) or {}).get("imbalance_ratio")


def check_classifier(model, x, num_classes, what):
    """A classifier must take the dataset's images and give K logits: refused before any work otherwise."""
    try:
        with torch.no_grad():
            out = model.eval()(x[None].to(next(model.parameters()).device))
    except RuntimeError as e:
        raise ValueError(f"{what}: does not take the dataset's images {tuple(x.shape)} "
                         f"({str(e).splitlines()[0]})") from None
    if out.dim() != 2 or out.shape[1] != num_classes:
        raise ValueError(f"{what}: gives {out.shape[-1]} class logits, the dataset has {num_classes} classes")


class GANTrainer(TrainLoop):
    """Trains one method of the registry on ``dataset`` into the run directory ``out`` (resuming what is
    there, refusing other settings): ``GANTrainer(data, "runs/x", method="cbgan", classifier=clf, steps=...)``
    then ``.run()``; ``.generate(n)`` samples the EMA generator. ``settings`` are ``train.options.OPTIONS``."""

    resume_may_change = _LOOP_ONLY
    settings_added_later = {"cb_start": 0, "n_dis": 1, "policy": "", "d_sn": None, "d_channels_last": False,
                            "ae_steps": 1000, "ae_lr": None, "ae_beta1": None, "real_sampling": "data",
                            "latent_shrinkage": 0.1, "class_sampling": "uniform", "target_class": -1,
                            "acgan_aux": "real+fake", "acgan_g": "multiply",
                            "d_class_sampling": None, "gsr": 0.0, "gsr_beta": 0.99, "gsr_power_iterations": 4,
                            "lecam": 0.0, "lecam_decay": 0.9, "lecam_start": 1000}
    per_rank_state = ("data_rng", "noise_rng", "aug_rng")

    def __init__(self, dataset, out: str, *, method: str = "cbgan", classifier: Optional[torch.nn.Module] = None,
                 annotator: Optional[str] = None, eval_images=None, device: str = "cpu", deterministic: bool = False,
                 progress: bool = True, sync_bn: bool = False, soft_labels: Optional[torch.Tensor] = None, **settings):
        cls = get_method(method)
        s = opts.resolve(cls.defaults, **settings)
        cb_reg = cls.cb_regularizer if s["cb_reg"] is None else bool(s["cb_reg"])
        unused = opts.unused_options(cls, settings, cb_reg)
        if unused:
            raise ValueError(f"GANTrainer: method {method!r}{'' if cb_reg else ' without the CB regularizer'} does "
                             f"not use {', '.join(unused)}")
        if classifier is not None and not cb_reg:
            raise ValueError(f"GANTrainer: method {method!r} without the CB regularizer does not use a classifier")
        s["policy"] = ",".join(parse_policy(s["policy"]))  # one spelling in the config, so resumes match
        self.num_classes = len(dataset.class_counts)
        self.method = cls(self.num_classes, dataset.class_counts, s)
        self.method.check(dataset, s)
        x0, _ = dataset[0]
        if cb_reg:
            if classifier is None:
                raise ValueError(f"GANTrainer: method {method!r} with the CB regularizer needs the pretrained "
                                 "classifier (classifier=..., --classifier)")
            check_classifier(classifier.to(device), x0, self.num_classes, "the classifier in the loop")
        soft_digest = None
        if cls.needs_soft_labels:
            if soft_labels is None:
                raise ValueError(f"GANTrainer: method {method!r} needs soft labels for the training images "
                                 "(soft_labels=[N, K], --soft-labels CLASSIFIER.pt)")
            n = len(dataset)
            if (not isinstance(soft_labels, torch.Tensor) or soft_labels.dim() != 2
                    or tuple(soft_labels.shape) != (n, self.num_classes)):
                shape = tuple(soft_labels.shape) if isinstance(soft_labels, torch.Tensor) else type(soft_labels)
                raise ValueError(f"GANTrainer: soft_labels must be [{n}, {self.num_classes}] (one row per training "
                                 f"image, in dataset order), got {shape}")
            self.method.soft_table = soft_labels.detach().float().cpu()
            soft_digest = hashlib.sha256(self.method.soft_table.numpy().tobytes()).hexdigest()[:16]
        self._check_regularizers(method, settings, s, x0)
        if annotator is not None:
            check_classifier(annotator.to(device), x0, self.num_classes, "the annotator")
            if eval_images is None and getattr(dataset, "config", None) is None:
                raise ValueError("GANTrainer: evaluation compares with the balanced test split; this dataset "
                                 "records no config to rebuild it from: pass eval_images=")
        super().__init__(out, s["steps"], seed=s["seed"], device=device, log_every=s["log_every"],
                         sample_every=s["sample_every"], eval_every=s["eval_every"] if annotator is not None else 0,
                         ckpt_every=s["ckpt_every"], select_key="fd" if annotator is not None else None,
                         progress=progress, max_minutes=s["max_minutes"])
        ckpt.seed_everything(s["seed"], deterministic)
        self.settings, self.dataset = s, dataset
        channels, size = x0.shape[0], x0.shape[-1]
        self.G, self.D = self.method.build(s["arch"], channels=channels, image_size=size, width=s["width"],
                                           z_dim=s["z_dim"], d_sn=s["d_sn"])
        if sync_bn and self.world_size > 1:
            if self.device.type != "cuda":
                raise ValueError("GANTrainer: sync_bn (--sync-bn) needs CUDA devices: SyncBatchNorm runs on CUDA only")
            self.G = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.G)
        self.G.to(self.device)
        self.D.to(self.device)
        self.z_dim, self.batch_size = s["z_dim"], s["batch_size"]
        self.local_batch = dist.local_share(self.batch_size, "batch_size")
        self.modules = {"G": self.G, "D": self.D}
        # D's own steps go through DDP; the G step calls the bare D (its gradients are not kept, so not reduced)
        self.G_step, self.D_step = dist.wrap(self.G, self.device), dist.wrap(self.D, self.device)
        betas = (s["beta1"], s["beta2"])
        self.optimizers = {"G": torch.optim.Adam(self.G.parameters(), lr=s["lr"], betas=betas),
                           "D": torch.optim.Adam(self.D.parameters(), lr=s["lr"], betas=betas)}
        self.ema = EMA(self.G, s["ema_decay"], s["ema_start"])
        self.data_rng = GeneratorState(stream_seed(s["seed"], 1, self.rank))
        self.noise_rng = GeneratorState(stream_seed(s["seed"], 2, self.rank), self.device)
        self.extra_state = {"data_rng": self.data_rng, "noise_rng": self.noise_rng}
        self.policy = s["policy"]
        if self.policy:  # its own stream, so that a policy leaves the data and noise streams as they were
            self.aug_rng = GeneratorState(stream_seed(s["seed"], 3, self.rank), self.device)
            self.extra_state["aug_rng"] = self.aug_rng
        for k, v in self.method.state().items():
            self.extra_state[f"method.{k}"] = v
        self.classifier = None if classifier is None else classifier.to(self.device).eval().requires_grad_(False)
        self.reg = None
        lam = s["lam"]
        if cb_reg:
            if lam is None:
                lam = paper_lambda(_dataset_imbalance(dataset) or 1.0)
            self.reg = CBRegularizer(self.num_classes, lam, alpha=s["alpha"], beta=s["beta"],
                                     update_every=s["cycle"], weighting=s["weighting"]).to(self.device)
            self.extra_state["reg"] = self.reg
        self.gsr = self.lecam = None
        if s["gsr"] > 0:
            self.gsr = GroupSpectralRegularizer(self.G, s["gsr"], class_counts=dataset.class_counts,
                                                beta=s["gsr_beta"], power_iterations=s["gsr_power_iterations"],
                                                seed=stream_seed(s["seed"], 4, 0))
            self.extra_state["gsr"] = self.gsr
        if s["lecam"] > 0:
            self.lecam = LeCamRegularizer(s["lecam"], decay=s["lecam_decay"], start=s["lecam_start"]).to(self.device)
            self.extra_state["lecam"] = self.lecam
        self.annotator = None if annotator is None else annotator.to(self.device).eval()
        self._eval_images = eval_images
        self._evaluator = None
        self.images, self.labels = self.method.training_set(*self._stack_dataset(dataset))
        self._real_weights = None
        if s["real_sampling"] == "balanced":
            counts = torch.bincount(self.labels, minlength=self.num_classes).double()
            self._real_weights = (1.0 / counts.clamp(min=1))[self.labels]
        # from the global batch, then split: the released composition whatever the number of ranks
        n_d, n_g = self.method.fake_batch_sizes(self.batch_size)
        self.n_fake_d = dist.local_share(n_d, "fakes per D step")
        self.n_fake_g = dist.local_share(n_g, "fakes per G step")
        self.config = dict(method=method, **{k: v for k, v in s.items() if k not in ("lam", "beta", "cb_reg")},
                           cb_reg=cb_reg, lam=None if self.reg is None else self.reg.lam,
                           beta=None if self.reg is None else self.reg.beta,
                           num_classes=self.num_classes, image_shape=list(x0.shape),
                           class_counts=[int(c) for c in dataset.class_counts],
                           dataset=getattr(dataset, "config", None))
        if soft_digest:
            self.config["soft_labels_sha256"] = soft_digest
        if sync_bn:
            self.config["sync_bn"] = True

    def _check_regularizers(self, method, given, s, x0):
        """gSR needs class-conditional BatchNorm in G, LeCam one D score an image; their sub-settings need them
        on. Refused before any work."""
        for main, subs in opts.TERM_SETTINGS.items():
            stray = [k for k in subs if k in given]
            if stray and s[main] == 0:
                raise ValueError(f"GANTrainer: {', '.join(stray)} only apply with {main} > 0")
        if s["lecam"] > 0 and not self.method.scalar_d_outputs:
            raise ValueError(f"GANTrainer: lecam needs one D score an image; method {method!r} has a "
                             f"{self.method.d_head!r} D")
        if s["gsr"] > 0:
            G, _ = self.method.build(s["arch"], channels=x0.shape[0], image_size=x0.shape[-1], width=s["width"],
                                     z_dim=s["z_dim"], d_sn=s["d_sn"])
            if not class_conditional_bn_layers(G):
                raise ValueError(f"GANTrainer: gsr needs class-conditional BatchNorm in G; method {method!r} on "
                                 f"arch {s['arch']!r} has none")

    def resume_ignores(self):
        """Settings this method never reads (an older run's ``ae_steps`` of a plain GAN, say) need not match."""
        ignored = set(opts.unused_options(type(self.method), opts.OPTIONS, self.reg is not None))
        return ignored | ({"classifier"} if self.reg is None else set())

    @staticmethod
    def _stack_dataset(dataset):
        if hasattr(dataset, "float_images"):  # cbgan_ext.data's in-memory datasets
            return dataset.float_images(), dataset.labels
        images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
        if isinstance(images, torch.Tensor) and images.dtype.is_floating_point and isinstance(labels, torch.Tensor):
            return images, labels.to(torch.int64)
        items = [dataset[i] for i in range(len(dataset))]
        return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])

    def _noise(self, n):
        return torch.randn(n, self.z_dim, device=self.device, generator=self.noise_rng.gen)

    def _real_batch(self):
        if self._real_weights is not None:  # every class equally often
            idx = torch.multinomial(self._real_weights, self.local_batch, replacement=True,
                                    generator=self.data_rng.gen)
        else:
            idx = torch.randint(0, self.images.shape[0], (self.local_batch,), generator=self.data_rng.gen)
        return (self.images[idx].to(self.device, non_blocking=True), self.labels[idx].to(self.device), idx)

    def _fake_labels(self, n, for_d=False):
        s = self.settings
        mode = s["d_class_sampling"] if for_d and s["d_class_sampling"] is not None else s["class_sampling"]
        return self.method.sample_labels(n, self.noise_rng.gen, self.device, mode)

    def _fake_batch(self, n, for_d=False):
        z = self._noise(n)
        y = self._fake_labels(n, for_d)
        return (self.G_step(z, y) if self.method.conditional else self.G_step(z)), y

    def _augment(self, x):
        """D's view of a batch: DiffAugment (when a policy is set), in D's memory format."""
        if self.policy:
            x = diff_augment(x, self.policy, generator=self.aug_rng.gen)
        return x.contiguous(memory_format=torch.channels_last) if self.settings["d_channels_last"] else x

    def train_step(self, step):
        M, opt_g, opt_d = self.method, self.optimizers["G"], self.optimizers["D"]
        for _ in range(self.settings["n_dis"]):
            real, real_y, idx = self._real_batch()
            real_y = M.real_labels(real_y, idx)
            with torch.no_grad():
                fake, fake_y = self._fake_batch(self.n_fake_d, for_d=True)
            if self.policy:  # one call on [fake; real]: each image gets its own augmentation parameters
                fake, real = self._augment(torch.cat([fake, real])).split([fake.shape[0], real.shape[0]])
            else:
                fake, real = self._augment(fake), self._augment(real)
            loss_d, metrics_d = M.d_loss(self.D_step, real, real_y, fake, fake_y)
            if self.lecam is not None:
                lc = self.lecam(*M.last_d_outputs, step)
                loss_d = loss_d + lc
                metrics_d = dict(metrics_d, lecam=lc.detach().item())
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        fake, fake_y = self._fake_batch(self.n_fake_g)
        loss_g, metrics_g = M.g_loss(self.D, real, real_y, self._augment(fake), fake_y)
        metrics = {"loss_d": loss_d.item(), "loss_g": loss_g.detach().item(), **metrics_d, **metrics_g}
        use_reg = self.reg is not None and step >= self.settings["cb_start"]
        if use_reg:  # on the fakes before augmentation
            reg = self.reg(self.classifier(fake))
            loss_g = loss_g + reg
            metrics["reg"] = reg.detach().item()
        if self.gsr is not None:
            gsr = self.gsr()
            loss_g = loss_g + gsr
            metrics["gsr"] = gsr.detach().item()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if use_reg:
            self.reg.step()
        self.ema.update(self.G, step)
        return metrics

    def on_fresh_start(self):
        # A checkpoint of the adversarial stage replaces what pre-stages make, so they run only without one,
        # after any checkpoint of other settings has been refused.
        self.method.prepare(self)

    # ---- sampling and evaluation ---------------------------------------------------------------------
    def generate(self, n, generator=None, batch=500, use_ema=True):
        G = self.ema.model if use_ema else self.G
        return generate(G, n, z_dim=self.z_dim, num_classes=self.num_classes, conditional=self.method.conditional,
                        generator=generator, batch=batch, device=self.device)[0]

    def sample_grid(self, path):
        g = torch.Generator().manual_seed(1234)  # the same z every time: grids are comparable across steps
        x = self.generate(64, generator=g)
        torchvision.utils.save_image(x, path, nrow=8, normalize=True, value_range=(-1, 1))

    @property
    def evaluator(self):
        if self._evaluator is None and self.annotator is not None:
            s = self.settings
            kw = dict(n=s["eval_samples"], fid=s["fid"], device=self.device)
            if self._eval_images is not None:
                self._evaluator = Evaluator(self.annotator, self._eval_images, self.num_classes, **kw)
            else:
                self._evaluator = Evaluator.for_dataset_config(self.annotator, self.dataset.config,
                                                               self.num_classes, **kw)
        return self._evaluator

    @evaluator.setter
    def evaluator(self, ev):
        self._evaluator = ev

    def evaluate(self):
        if self.annotator is None:
            return {}
        return self.evaluator(self.ema.model, z_dim=self.z_dim, conditional=self.method.conditional,
                              label=self.method.eval_label())


# ---- runs on disk ----------------------------------------------------------------------------------------

def _run_checkpoint(run_dir, checkpoint):
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    path = os.path.join(run_dir, "best.pt" if checkpoint == "best" else "checkpoint.pt")
    if checkpoint == "best" and not os.path.exists(path):
        path = os.path.join(run_dir, "checkpoint.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint in {run_dir} (looked for best.pt and checkpoint.pt)")
    state = ckpt.load(path, what="run checkpoint")
    if not (isinstance(state, dict) and isinstance(state.get("config"), dict) and "modules" in state
            and "num_classes" in state["config"]):
        hint = " (it is a classifier's)" if isinstance(state, dict) and "model_config" in state else ""
        raise ValueError(f"{path} is not a checkpoint of a cbgan-ext train run{hint}")
    return state


def load_run(run_dir, checkpoint="best", device="cpu", generator="ema"):
    """A ``cbgan-ext train`` run: namespace(G (eval mode), z_dim, method, conditional, num_classes, config, step).
    ``generator``: "ema" (the EMA weights; G itself when the run keeps no EMA) or "raw" (G as trained)."""
    if generator not in ("ema", "raw"):
        raise ValueError(f"generator must be 'ema' or 'raw', got {generator!r}")
    state = _run_checkpoint(run_dir, checkpoint)
    c = state["config"]
    name = c.get("method", "gan")
    if name not in method_names():
        raise ValueError(f"{run_dir}: method {name!r} is not known to this version of cbgan_ext")
    method = get_method(name)(c["num_classes"], c.get("class_counts"), c)
    shape = c["image_shape"]
    G, _ = method.build(c["arch"], channels=shape[0], image_size=shape[-1], width=c["width"], z_dim=c["z_dim"],
                        d_sn=c.get("d_sn"))
    ema = generator == "ema" and state.get("ema") is not None
    G.load_state_dict(state["ema"] if ema else state["modules"]["G"])
    return SimpleNamespace(G=G.to(device).eval(), z_dim=c["z_dim"], method=name, conditional=method.conditional,
                           num_classes=c["num_classes"], config=c, step=state["step"], label=method.eval_label(),
                           generator="ema" if ema else "raw")


def load_generator(run_dir, checkpoint="best", device="cpu"):
    """(EMA generator in eval mode, z_dim) of a ``cbgan-ext train`` run."""
    run = load_run(run_dir, checkpoint, device)
    return run.G, run.z_dim


def evaluate_run(run_dir, checkpoint="best", annotator=None, n=10000, fid="auto", device="cpu", seed=0,
                 ssim_pairs=500, ssim_queries=50, ssim_pool=500, lpips_images=100, generator="ema", loaded=None):
    """The metrics of a run against the balanced test split of its dataset (see ``Evaluator``); BAGAN-family
    runs also get the SSIM variability measures (``ssim_pairs`` random pairs per class; for the minority
    classes, ``ssim_queries`` images searched for their nearest among up to ``ssim_pool`` training images of
    the class) and
    their minority classes named (``minority_classes``, ``minority_accuracy``). LPIPS diversity over
    ``lpips_images`` fakes (per class for conditional runs; 0: not computed) when its weights are present.
    ``generator``: "ema" or "raw", as in ``load_run``; ``loaded``: that ``load_run`` result, when the caller has it."""
    from ..models.classifier import load_classifier
    run = loaded if loaded is not None else load_run(run_dir, checkpoint, device, generator)
    c = run.config
    ann_path = annotator or c.get("annotator")
    if not ann_path:
        raise ValueError(f"{run_dir} records no annotator; pass --annotator")
    if not c.get("dataset"):
        raise ValueError(f"{run_dir} records no dataset config to rebuild its test split from")
    ann = load_classifier(ann_path, map_location=device)
    real = balanced_test_split(c["dataset"])
    check_classifier(ann, real[0][0], run.num_classes, f"annotator {ann_path}")
    variability = None
    if get_method(run.method).ssim_eval:  # BAGAN's measures, against the run's own (imbalanced) training images
        from ..data import dataset_from_config
        train = dataset_from_config(c["dataset"])
        variability = (train.float_images(), train.labels, ssim_pairs, ssim_queries, ssim_pool,
                       dataset_minority_classes(c["dataset"]) or None)
    ev = Evaluator(ann, real.float_images(), run.num_classes, n=n, seed=seed, fid=fid, device=device,
                   real_labels=real.labels, prdc=run.conditional, variability=variability)
    res = ev(run.G, z_dim=run.z_dim, conditional=run.conditional, label=run.label)
    res.update(step=run.step, checkpoint=checkpoint, method=run.method, generator=run.generator)
    if lpips_images:
        res.update(lpips_scores(run.G, z_dim=run.z_dim, num_classes=run.num_classes, conditional=run.conditional,
                                n=int(lpips_images), seed=seed + 1, device=device))
    minority = dataset_minority_classes(c.get("dataset"))
    if minority and res.get("class_accuracy"):
        res["minority_classes"] = list(minority)
        res["minority_accuracy"] = [res["class_accuracy"][k] for k in minority]
    return res
