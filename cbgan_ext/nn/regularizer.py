"""CBRegularizer: CBGAN's class-balancing regularizer as a drop-in module.

    reg = CBRegularizer(num_classes=10, lam=1.0)
    ...
    loss_g = loss_g + reg(classifier(fake))   # generator step, fakes before any augmentation
    loss_g.backward(); opt_g.step(); reg.step()

Two weightings:

* ``"paper"`` (the paper's text): N = N̂ / ΣN̂ (Eq. 6), w_k = 1/N_k, loss scaled by lam/K (supplementary
  §1.4.1). The argmax counts of a cycle start at 0.
* ``"official"`` (the released code, ``weight_regularizer.py`` with mode != "effective"):
  w = K·(1/N̂) / Σ_j (1/N̂_j), N̂ clamped to ≥ 1 after each update, the first cycle's counts start at a
  prior of 512 per class, loss scaled by lam, and by default the convex combination β = 1 − α of the
  released CIFAR/LSUN configuration (N̂ ← 0.5 N̂ + 0.5 c at α = 0.5).

Both update the effective class frequency after every ``update_every`` calls of ``step()`` (Eq. 5):
N̂ ← (1−α)·N̂ + β·c, with c the argmax counts accumulated since the last update (then reset to 0);
``beta=None`` means β = 1 (the paper's Eq. 5) for "paper" and β = 1 − α for "official". N̂ starts at ``init_count``
(default 50, the released code's value) for every class. Counts are accumulated only in training mode.
``start=S`` leaves the term off for the first S calls of ``step()`` (forward returns 0, counts nothing;
``reg.active`` says when it is on), then runs as a module made at step S would. ``reg.last_loss`` is the last
term returned (detached), for logging it apart from G's loss. ``CBRegularizer.recipe(K)`` is the setting of
the recorded runs.

Under ``torch.distributed`` (a process group of more than one rank, e.g. launched by torchrun) the statistics
are global: the softmax column sums, the argmax counts and the batch size are summed over ranks in one
autograd-aware all-reduce of 2K + 1 numbers (``torch.distributed.nn``), so p̂ is the mean over the global batch,
every rank holds the same counts and N̂, and after DistributedDataParallel averages the gradients they equal
one process's on the concatenated batch. (A plain ``dist.all_reduce`` would carry no gradient from the other
ranks' samples.) ``CBRegularizer(..., distributed=False)`` keeps each rank's statistics local.
"""
import math
from typing import Optional

import torch
from torch import nn

from ..ops import class_balancing_loss_with_counts

_WEIGHTINGS = ("paper", "official")
_OFFICIAL_COUNT_PRIOR = 512.0


def _world_size():
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _global_loss_and_counts(logits, w):
    """Eq. 7 on the global batch: one autograd-aware all-reduce of [softmax column sums, argmax counts, B]."""
    import warnings
    from torch.distributed.nn.functional import all_reduce
    K = logits.shape[1]
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    probs = torch.softmax(x, dim=1)
    counts = torch.bincount(x.detach().argmax(dim=1), minlength=K).to(x.dtype)
    local = torch.cat([probs.sum(0), counts, x.new_full((1,), float(x.shape[0]))])
    with warnings.catch_warnings():  # its proposed successor has no autograd for all_reduce
        warnings.simplefilter("ignore", FutureWarning)
        total = all_reduce(local)
    mean_p = total[:K] / total[2 * K]
    # 0·log 0 = 0 with a finite gradient, as the fused op (xlogy's gradient is 0/0 there)
    plogp = torch.where(mean_p > 0, mean_p * torch.log(mean_p.clamp_min(torch.finfo(mean_p.dtype).tiny)), 0.0)
    loss = torch.sum(w.to(mean_p.dtype) * plogp)
    return loss, total[K:2 * K].detach().round().to(torch.int64)


def _number(name, v, lo, hi=None, open_lo=False, why=""):
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (v > lo if open_lo else v >= lo) and (hi is None or v <= hi)
    if not ok:
        rng = (f"in [{lo:g}, {hi:g}]" if hi is not None else f"{'>' if open_lo else '>='} {lo:g}")
        raise ValueError(f"CBRegularizer: {name} must be a finite number {rng}{why}, got {v!r}")


def _integer(name, v, lo):
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and float(v).is_integer()
    if not (ok and v >= lo):
        raise ValueError(f"CBRegularizer: {name} must be an integer >= {lo}, got {v!r}")


class CBRegularizer(nn.Module):
    """CBGAN's class-balancing term (Eq. 7) on a classifier's logits of generated images, with the effective
    class frequency N̂ kept across generator steps (Eq. 5); see the module docstring for the two weightings.

    ``reg(logits)`` [B, K] returns the scaled term (add it to G's loss); ``reg.step()`` once per generator step.
    """

    @classmethod
    def recipe(cls, num_classes: int, **overrides) -> "CBRegularizer":
        """The settings of the recorded CBGAN runs (docs/main-job: SNDCGAN, 2000 generator steps): the released
        code's weighting, λ = 5, the class statistics updated every 50 steps, and the term off for the first
        500 generator steps (until G draws shapes). ``overrides`` replace any of them."""
        return cls(num_classes, **{**dict(lam=5.0, update_every=50, weighting="official", start=500), **overrides})

    def __init__(self, num_classes: int, lam: float, *, alpha: float = 0.5, beta: Optional[float] = None,
                 update_every: int = 2000, weighting: str = "paper", init_count: float = 50.0, start: int = 0,
                 distributed: bool = True):
        super().__init__()
        self.distributed = bool(distributed)
        _integer("num_classes", num_classes, 1)
        if weighting not in _WEIGHTINGS:
            raise ValueError(f"CBRegularizer: weighting must be one of {_WEIGHTINGS}, got {weighting!r}")
        _number("alpha", alpha, 0.0, 1.0)
        _number("lam", lam, 0.0)
        if beta is not None:
            _number("beta", beta, 0.0, why=" (negative β makes class weights negative)")
        _integer("update_every", update_every, 1)
        _number("init_count", init_count, 0.0, open_lo=True)
        _integer("start", start, 0)
        self.start = int(start)
        self.last_loss = None
        self.num_classes = int(num_classes)
        self.lam = float(lam)
        self.alpha = float(alpha)
        if beta is None:
            beta = 1.0 - float(alpha) if weighting == "official" else 1.0
        self.beta = float(beta)
        self.update_every = int(update_every)
        self.weighting = weighting
        prior = _OFFICIAL_COUNT_PRIOR if weighting == "official" else 0.0
        self.register_buffer("effective_count", torch.full((self.num_classes,), float(init_count), dtype=torch.float64))
        self.register_buffer("counts", torch.full((self.num_classes,), prior, dtype=torch.float64))
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.int64))

    _CONFIG = ("num_classes", "lam", "alpha", "beta", "update_every", "weighting", "start")

    def get_extra_state(self):
        """The configuration travels with the counts, so they never load into a differently configured module."""
        return {k: getattr(self, k) for k in self._CONFIG}

    def set_extra_state(self, state):
        state = {"start": 0, **state}  # states saved before `start` existed had none
        diff = [f"{k}: {state[k]!r} there, {getattr(self, k)!r} here" for k in self._CONFIG
                if k in state and state[k] != getattr(self, k)]
        if diff:
            raise ValueError(f"CBRegularizer: the state was saved by a module of other settings ({', '.join(diff)})")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # states saved before the configuration was part of them load as they did
        state_dict.setdefault(prefix + "_extra_state", self.get_extra_state())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self):
        return (f"num_classes={self.num_classes}, lam={self.lam}, alpha={self.alpha}, beta={self.beta}, "
                f"update_every={self.update_every}, weighting={self.weighting!r}, start={self.start}")

    @property
    def active(self):
        """False during the first ``start`` generator steps (counted by step()): forward then returns 0 and
        counts nothing, so the classifier need not run."""
        return int(self.num_steps) >= self.start

    def class_distribution(self):
        """N = N̂ / ΣN̂ (Eq. 6), float64 [K]."""
        return self.effective_count / self.effective_count.sum()

    def class_weights(self):
        """The w_k the loss uses (see the module docstring for the two weightings)."""
        if self.weighting == "paper":
            return 1.0 / self.class_distribution()
        inv = 1.0 / self.effective_count
        return self.num_classes * inv / inv.sum()

    @property
    def scale(self):
        return self.lam / self.num_classes if self.weighting == "paper" else self.lam

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"CBRegularizer: expected classifier logits [B, {self.num_classes}], "
                             f"got shape {tuple(logits.shape)}")
        if not self.active:
            self.last_loss = logits.new_zeros(())
            return self.last_loss
        w = self.class_weights().to(device=logits.device, dtype=torch.float32 if logits.dtype != torch.float64
                                    else torch.float64)
        if self.distributed and _world_size() > 1:
            loss, counts = _global_loss_and_counts(logits, w)
        else:
            loss, counts = class_balancing_loss_with_counts(logits, w)
        if self.training:
            with torch.no_grad():
                self.counts += counts.to(self.counts.device, self.counts.dtype)
        out = self.scale * loss
        self.last_loss = out.detach()  # the CB term alone, for logging apart from G's loss
        return out

    @torch.no_grad()
    def step(self) -> None:
        """Call once after each generator step; every ``update_every`` calls after ``start`` the statistics
        update."""
        self.num_steps += 1
        done = int(self.num_steps) - self.start
        if done > 0 and done % self.update_every == 0:
            self.update_statistics()

    @torch.no_grad()
    def update_statistics(self):
        """Eq. 5: N̂ ← (1−α)·N̂ + β·c, then c ← 0."""
        self.effective_count.mul_(1.0 - self.alpha).add_(self.counts, alpha=self.beta)
        if self.weighting == "official":
            self.effective_count.clamp_(min=1.0)
        self.counts.zero_()

    @torch.no_grad()
    def sample_labels(self, n, generator=None):
        """n class labels drawn with probability ∝ 1/N_k (the supplementary's iNaturalist conditioning)."""
        p = 1.0 / self.class_distribution()
        dev = generator.device if generator is not None else self.effective_count.device
        return torch.multinomial((p / p.sum()).to(dev), int(n), replacement=True, generator=generator)
