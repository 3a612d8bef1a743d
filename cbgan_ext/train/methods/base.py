"""What a GAN method is to the shared loop, and the registry of methods by name.

A method builds G and D for the data, samples the conditioning of fakes, and computes the discriminator and
generator losses from a real batch and a fake batch. The loop (``cbgan_ext.train.gan.GANTrainer``) owns
everything else: data, noise, optimizers, EMA, the CB regularizer (an option any method can switch on),
evaluation, checkpoints. Register a subclass with ``@register`` and add its module to ``methods/__init__``.
"""
import torch

from ...models import build_gan
from .. import losses

_REGISTRY = {}  # name -> Method subclass, in registration order


def register(cls):
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"methods.register: {cls.__name__} needs a unique name, got {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def method_names():
    return tuple(_REGISTRY)


def get_method(name):
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


class Method:
    name = None           # the CLI's --method value
    title = ""            # one line for help texts and the README table
    paper = ""            # where it comes from
    conditional = False   # G(z, y) with y drawn by sample_labels
    d_head = "scalar"     # see cbgan_ext.models.heads.D_HEADS
    loss = "relativistic"  # a key of losses.ADVERSARIAL
    cb_regularizer = False  # the CB regularizer on the fakes by default (needs the classifier in the loop)
    in_main_job = False   # trained by `cbgan-ext demo`
    needs_soft_labels = False  # a classifier's softmax for every training image (GANTrainer(soft_labels=...))
    defaults = {}         # this method's own defaults for settings of cbgan_ext.train.options (given values win)

    ssim_eval = False     # `eval` adds BAGAN's SSIM variability measures
    pre_stages = ()       # names of stages run before the adversarial one (``prepare``), for help texts
    option_groups = ()    # groups of method-specific settings it reads (cbgan_ext.train.options.GROUPS)
    scalar_d_outputs = True  # D gives one real/fake score an image through d_loss (so LeCam applies)

    def __init__(self, num_classes, class_counts=None, settings=None):
        self.num_classes = int(num_classes)
        self.class_counts = None if class_counts is None else [int(c) for c in class_counts]
        self.settings = dict(settings or {})
        self.d_loss_fn, self.g_loss_fn = losses.ADVERSARIAL.get(self.loss, (None, None))

    def build(self, arch, *, channels, image_size, width, z_dim, d_sn=None):
        needs_k = self.conditional or self.d_head != "scalar"
        return build_gan(arch, channels=channels, image_size=image_size, width=width, z_dim=z_dim,
                         num_classes=self.num_classes if needs_k else 0, conditional_g=self.conditional,
                         d_head=self.d_head, d_spectral_norm=d_sn)

    def check(self, dataset, settings):
        """Refuse, before any work, data or settings this method cannot train on (ValueError)."""

    def training_set(self, images, labels):
        """The (images, labels) the method trains on: all of them, or a subset (the single-class GAN)."""
        return images, labels

    def fake_batch_sizes(self, batch):
        """(fakes per D step, fakes per G step) for ``batch`` real images per D step."""
        return batch, batch

    def prepare(self, trainer):
        """Stages before the adversarial one (BAGAN's autoencoder), each resumable; run when the adversarial
        stage has no checkpoint yet (``GANTrainer.on_fresh_start``)."""

    def eval_label(self):
        """For an unconditional method trained on one class: that class (its fakes are judged as it)."""
        return None

    def class_probs(self, mode="uniform"):
        """Class probabilities of the fakes: "uniform", "data" (the training set's shares) or "rebalance" (the
        released BAGAN code's, p_c ∝ max(0, 2/K − share of c))."""
        K = self.num_classes
        if mode == "uniform":
            return torch.full((K,), 1.0 / K, dtype=torch.float64)
        share = torch.tensor(self.class_counts, dtype=torch.float64)
        share = share / share.sum()
        if mode == "data":
            return share
        p = (2.0 / K - share).clamp_(min=0)
        return p / p.sum()

    def sample_labels(self, n, generator, device, mode="uniform"):
        """Labels of the fakes (conditional methods), drawn with ``class_probs(mode)``."""
        if not self.conditional:
            return None
        if mode == "uniform":
            return torch.randint(0, self.num_classes, (n,), generator=generator, device=device)
        probs = self.class_probs(mode).to(device=device, dtype=torch.float32)
        return torch.multinomial(probs, n, replacement=True, generator=generator)

    def real_labels(self, labels, index):
        """What D is told about a real batch: by default its hard labels; ``index`` are the dataset indices."""
        return labels

    def discriminate(self, D, x, y):
        return D(x, y) if self.d_head != "scalar" else D(x)

    def d_loss(self, D, real, real_labels, fake, fake_labels):
        """(loss, metrics) of the discriminator step; ``fake`` is detached. D's outputs stay in
        ``last_d_outputs`` for regularizers of them (LeCam)."""
        d_real, d_fake = self.discriminate(D, real, real_labels), self.discriminate(D, fake, fake_labels)
        self.last_d_outputs = (d_real, d_fake)
        return self.d_loss_fn(d_real, d_fake), {}

    def g_loss(self, D, real, real_labels, fake, fake_labels):
        """(loss, metrics) of the generator step, before the optional CB regularizer."""
        d_real = None
        if self.loss == "relativistic":  # the relativistic G loss pairs fakes with real logits (held constant)
            with torch.no_grad():
                d_real = self.discriminate(D, real, real_labels)
        return self.g_loss_fn(self.discriminate(D, fake, fake_labels), d_real), {}

    def state(self):
        """Objects with state_dict/load_state_dict the loop checkpoints (e.g. class Gaussians)."""
        return {}
