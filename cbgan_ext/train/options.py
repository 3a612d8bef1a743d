"""The GAN trainer's settings: one table of defaults, help texts and checks, read by the Python API
(``GANTrainer``), the ``cbgan-ext train`` flags and the main job, so the three cannot disagree. A method may
replace some defaults (``Method.defaults``: Softlabel-GAN's BigGAN recipe); given values win over both.

Defaults are the CBGAN paper's (supplementary Table 6, §1.4.1): Adam lr 2e-4, betas (0.5, 0.999), one D
step per G step, 100k steps, λ by imbalance ratio (10 / 7.5 / 5 for ρ = 100 / 10 / 1), α = 0.5, a cycle of
2000 steps, EMA of G with decay 0.9999 from step 20k.
"""
import math


class Option:
    def __init__(self, default, help, check=None, type=None, flag=True):
        self.default, self.help, self.check, self.flag = default, help, check, flag
        self.choices = getattr(check, "choices", None)
        self.type = type or (float if isinstance(default, float) else int if isinstance(default, int) else str)


def int_check(lo=None, hi=None):
    """A check: None when the value is an integer in [lo, hi], else what was expected."""
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) and not (isinstance(v, float) and v.is_integer()):
            return "an integer"
        if lo is not None and v < lo:
            return f"an integer >= {lo}"
        if hi is not None and v > hi:
            return f"an integer <= {hi}"
        return None
    return check


def float_check(lo=None, hi=None, lo_open=False, hi_open=False, none_ok=False):
    """A check: None when the value is a finite number in the range, else what was expected."""
    def check(v):
        if v is None and none_ok:
            return None
        rng = ("(" if lo_open else "[") + ("-inf" if lo is None else f"{lo:g}") + ", " + \
              ("inf" if hi is None else f"{hi:g}") + (")" if hi_open or hi is None else "]")
        what = f"a finite number in {rng}" + (" or unset" if none_ok else "")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return what
        if lo is not None and (v < lo or (lo_open and v == lo)):
            return what
        if hi is not None and (v > hi or (hi_open and v == hi)):
            return what
        return None
    return check


def _policy_check(v):
    from ..ops.diff_augment import parse_policy
    try:
        parse_policy(v)
    except (ValueError, TypeError, AttributeError):
        return "a DiffAugment policy: comma-separated words of color, translation, cutout ('' for none)"
    return None


def _choice(*values, none_ok=False):
    def check(v):
        if v in values or (none_ok and v is None):
            return None
        return "one of " + ", ".join(map(str, values)) + (" or unset" if none_ok else "")
    check.choices = values
    return check


OPTIONS = {
    "steps": Option(100000, "generator steps (paper: 100k)", int_check(0)),
    "arch": Option("sndcgan", "network pair", _choice("sndcgan", "snresgan", "biggan", "bagan")),
    "width": Option(1.0, "channel multiplier (1 = the paper's networks)", float_check(0, lo_open=True)),
    "z_dim": Option(128, "latent size", int_check(1)),
    "batch_size": Option(64, "images per D and per G step", int_check(1)),
    "n_dis": Option(1, "D steps per G step (each on its own real batch)", int_check(1)),
    "policy": Option("", "DiffAugment policy on D's inputs (comma-separated of color, translation, cutout; "
                         "'' for none)", _policy_check),
    "lr": Option(2e-4, "Adam learning rate of G and D", float_check(0, lo_open=True)),
    "beta1": Option(0.5, "Adam beta1", float_check(0, 1, hi_open=True)),
    "beta2": Option(0.999, "Adam beta2", float_check(0, 1, hi_open=True)),
    "cb_reg": Option(None, "add the CB regularizer to the G loss (default: on for cbgan only)", None, type=bool,
                     flag=False),
    "lam": Option(None, "CB regularizer weight λ (default: the paper's for the dataset's imbalance)",
                  float_check(0, none_ok=True), type=float),
    "alpha": Option(0.5, "forgetting factor α of Eq. 5", float_check(0, 1)),
    "beta": Option(None, "β of Eq. 5 (default: 1 for the paper weighting, 1 − α for the official one)",
                   float_check(0, none_ok=True), type=float),
    "cb_start": Option(0, "the CB regularizer joins the G loss from this step on (0: from the first); "
                       "before it, the step is the plain method's", int_check(0)),
    "cycle": Option(2000, "steps per cycle between updates of the effective class frequency N̂", int_check(1)),
    "weighting": Option("paper", "CB class weights: the paper's text or the released code's",
                        _choice("paper", "official")),
    "real_sampling": Option("data", "how D's real batches are drawn: 'data' (every image equally often, so classes as "
                            "in the data) or 'balanced' (every class equally often, images uniform within it)",
                            _choice("data", "balanced")),
    "gsr": Option(0.0, "gSR (group spectral regularization) weight λ: class-conditional BatchNorm gains and biases "
                  "of each class as matrices, their largest singular values squared join G's loss (0: off)",
                  float_check(0)),
    "gsr_beta": Option(0.99, "gSR: class weights by the effective number of samples with this β (0: equal)",
                       float_check(0, 1, hi_open=True)),
    "gsr_power_iterations": Option(4, "gSR: power iterations a G step (10× on the first)", int_check(1)),
    "lecam": Option(0.0, "LeCam weight λ: D's outputs kept near EMA anchors of each other's mean (0: off)",
                    float_check(0)),
    "lecam_decay": Option(0.9, "LeCam: decay of the anchors' EMA", float_check(0, 1, hi_open=True)),
    "lecam_start": Option(1000, "LeCam: the term joins D's loss after this step (anchors follow D before)",
                          int_check(0)),
    "ema_decay": Option(0.9999, "EMA decay of the generator", float_check(0, 1)),
    "ema_start": Option(20000, "EMA starts (copies before)", int_check(0)),
    "d_channels_last": Option(False, "D's inputs (so its activations) in channels_last memory format; CPU average "
                              "pooling is several times faster there, but whole BigGAN-32 iterations measured 1.12x "
                              "and 0.95x in two runs here: time it on your machine. Weights equal NCHW's up to float "
                              "rounding", None, type=bool, flag=False),
    "d_sn": Option(None, "spectral norm on D (default: the architecture's: on, off for bagan)", None, type=bool,
                   flag=False),
    "ae_steps": Option(1000, "BAGAN: autoencoder steps (MSE, all training images) before the adversarial stage",
                       int_check(0)),
    "ae_lr": Option(None, "BAGAN: the autoencoder's Adam learning rate (default: the GAN's lr, as the released code)",
                    float_check(0, lo_open=True, none_ok=True), type=float),
    "ae_beta1": Option(None, "BAGAN: the autoencoder's Adam beta1 (default: the GAN's beta1, as the released code)",
                       float_check(0, 1, hi_open=True, none_ok=True), type=float),
    "latent_shrinkage": Option(0.1, "BAGAN: a class with no more images than latent dimensions gets the covariance "
                               "(1 - s) Σ_c + s·diag(pooled Σ); 0 refuses such classes", float_check(0, 1)),
    "class_sampling": Option("uniform", "BAGAN, ACGAN: classes of G's fakes: uniform, the training set's shares "
                             "('data'), or the released BAGAN code's 'rebalance' (p_c ∝ max(0, 2/K − share of c))",
                             _choice("uniform", "data", "rebalance")),
    "d_class_sampling": Option(None, "BAGAN, ACGAN: classes of the fakes in D's batches, the same choices (default: "
                               "as class_sampling)", _choice("uniform", "data", "rebalance", none_ok=True)),
    "acgan_aux": Option("real", "ACGAN: the images D's auxiliary classifier learns from: 'real' (Keras' ACGAN example, "
                        "the code BAGAN's builds on) or 'real+fake' (Odena et al.'s paper)",
                        _choice("real", "real+fake")),
    "acgan_g": Option("multiply", "ACGAN: how G takes its class: 'multiply' (z times a learned class embedding, "
                      "Keras' ACGAN example) or 'concat' (z and the one-hot class side by side, Odena et al.)",
                      _choice("multiply", "concat")),
    "target_class": Option(-1, "minority-gan: the one class it trains on (-1: the dataset's minority class)",
                           int_check(-1)),
    "eval_every": Option(2000, "evaluate (and select best.pt) every N steps; 0: only at the end", int_check(0)),
    "eval_samples": Option(10000, "generated images per evaluation", int_check(2)),
    "sample_every": Option(2000, "sample grid every N steps; 0: never", int_check(0)),
    "ckpt_every": Option(500, "checkpoint every N steps", int_check(1)),
    "log_every": Option(50, "log training losses every N steps", int_check(1)),
    "max_minutes": Option(None, "stop (with a checkpoint) after this long; resume later",
                          float_check(0, lo_open=True, none_ok=True), type=float),
    "fid": Option("auto", "Fréchet distance features at evaluation: Inception when present, or the annotator's",
                  _choice("auto", "inception", "annotator")),
    "seed": Option(0, "seed of weights, data order and noise", int_check(0)),
}


# Regularizer terms and the settings that only apply with the term on (weight > 0).
TERM_SETTINGS = {"gsr": ("gsr_beta", "gsr_power_iterations"), "lecam": ("lecam_decay", "lecam_start")}


# Settings that only some methods read, by group. A method names the groups it reads in
# ``Method.option_groups``; the "cb" group is read wherever the CB regularizer is on (``cb_reg``).
GROUPS = {
    "cb": ("lam", "alpha", "beta", "cb_start", "cycle", "weighting"),
    "autoencoder": ("ae_steps", "ae_lr", "ae_beta1", "latent_shrinkage"),
    "class_sampling": ("class_sampling", "d_class_sampling"),
    "target_class": ("target_class",),
    "acgan": ("acgan_aux", "acgan_g"),
}


def unused_options(method_cls, keys, cb_reg):
    """The settings among ``keys`` that ``method_cls`` (with the CB regularizer on or off) never reads."""
    groups = set(method_cls.option_groups) | ({"cb"} if cb_reg else set())
    return [k for k in keys if any(k in members for g, members in GROUPS.items() if g not in groups)]


def check_options(values, label=lambda k: k):
    """ValueError naming the first bad setting: its name (``label(key)``), what is expected, the value."""
    unknown = sorted(set(values) - set(OPTIONS))
    if unknown:
        raise TypeError(f"unknown settings {unknown}; known: {sorted(OPTIONS)}")
    for k, v in values.items():
        check = OPTIONS[k].check
        what = check(v) if check else None
        if what:
            raise ValueError(f"{label(k)}: expected {what}, got {v!r}")


def resolve(method_defaults=None, **given):
    """The table's defaults, then a method's own defaults (``Method.defaults``), then ``given``, checked."""
    values = {k: o.default for k, o in OPTIONS.items()}
    values.update(method_defaults or {})
    values.update(given)
    check_options(values)
    return values
