"""The shared training loop: every method's trainer subclasses ``TrainLoop`` and supplies
``train_step`` and ``evaluate``.

The loop provides seeding, a progress bar, a JSONL metrics log (and TensorBoard when installed), sample
grids, periodic evaluation with best-checkpoint selection, and atomic checkpoints with exact resume:
models, optimizers, EMA, extra state (e.g. the CB regularizer), the data/noise generators and the global
RNG states are all saved, so a run killed at step s and resumed gives the same weights at step n as an
uninterrupted run.
"""
import copy
import json
import os
import time

import torch
from tqdm import tqdm

from . import checkpoint as ckpt


class EMA:
    """Exponential moving average of a generator: copies the weights until ``start`` steps, then
    ema = decay·ema + (1 − decay)·param. Buffers (BatchNorm statistics) are copied."""

    def __init__(self, model, decay=0.9999, start=20000):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.start = float(decay), int(start)

    @torch.no_grad()
    def update(self, model, step):
        d = self.decay if step >= self.start else 0.0
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.mul_(d).add_(p.detach(), alpha=1.0 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


class TrainLoop:
    """Subclasses set ``self.modules`` (name → nn.Module), ``self.optimizers`` (name → optimizer) and may
    set ``self.ema`` and ``self.extra_state`` (name → object with state_dict/load_state_dict), then call
    ``run()``."""

    def __init__(self, out, steps, *, seed=0, log_every=50, sample_every=500, eval_every=1000,
                 ckpt_every=500, select="min", select_key=None, progress=True, device="cpu"):
        self.out, self.steps, self.seed = out, int(steps), int(seed)
        self.log_every, self.sample_every = int(log_every), int(sample_every)
        self.eval_every, self.ckpt_every = int(eval_every), int(ckpt_every)
        self.select, self.select_key = select, select_key
        self.progress, self.device = progress, torch.device(device)
        self.modules, self.optimizers, self.extra_state = {}, {}, {}
        self.ema = None
        self.step = 0
        self.best = None
        self.config = {}
        os.makedirs(out, exist_ok=True)
        self.ckpt_path = os.path.join(out, "checkpoint.pt")
        self.best_path = os.path.join(out, "best.pt")
        self.log_path = os.path.join(out, "metrics.jsonl")
        self._tb = None

    # ---- to be provided by subclasses -------------------------------------------------------------
    def train_step(self, step):
        raise NotImplementedError

    def evaluate(self):
        return {}

    def sample_grid(self, path):
        pass

    # ---- state --------------------------------------------------------------------------------------
    def state_dict(self):
        return {
            "step": self.step,
            "best": self.best,
            "config": self.config,
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "ema": None if self.ema is None else self.ema.model.state_dict(),
            "extra": {k: v.state_dict() for k, v in self.extra_state.items()},
            "rng": ckpt.rng_state(),
        }

    def load_state_dict(self, state):
        self.step, self.best = state["step"], state["best"]
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        if self.ema is not None and state["ema"] is not None:
            self.ema.model.load_state_dict(state["ema"])
        for k, v in self.extra_state.items():
            v.load_state_dict(state["extra"][k])
        ckpt.set_rng_state(state["rng"])

    def save(self, path=None):
        ckpt.save_atomic(self.state_dict(), path or self.ckpt_path)

    def try_resume(self):
        if not os.path.exists(self.ckpt_path):
            return False
        self.load_state_dict(ckpt.load(self.ckpt_path, map_location=self.device))
        self._log({"event": "resumed", "step": self.step})
        return True

    # ---- logging ------------------------------------------------------------------------------------
    def _log(self, record):
        record = {"time": round(time.time(), 3), **record}
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self._tb.add_scalar(k, v, record.get("step", self.step))

    def _open_tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(os.path.join(self.out, "tb"))
        except Exception:  # tensorboard is optional
            self._tb = None

    def _is_better(self, value):
        if self.best is None:
            return True
        return value < self.best["value"] if self.select == "min" else value > self.best["value"]

    def run_evaluation(self):
        metrics = self.evaluate()
        self._log({"event": "eval", "step": self.step, **metrics})
        key = self.select_key
        if key and key in metrics and self._is_better(metrics[key]):
            self.best = {"step": self.step, "key": key, "value": metrics[key], "metrics": metrics}
            self.save(self.best_path)
        return metrics

    # ---- the loop -----------------------------------------------------------------------------------
    def run(self):
        self._open_tensorboard()
        if not self.try_resume():
            with open(os.path.join(self.out, "config.json"), "w") as f:
                json.dump(self.config, f, indent=1, default=str)
        bar = tqdm(total=self.steps, initial=self.step, disable=not self.progress, dynamic_ncols=True,
                   desc=os.path.basename(os.path.normpath(self.out)))
        while self.step < self.steps:
            for m in self.modules.values():
                m.train()
            metrics = self.train_step(self.step)
            self.step += 1
            bar.update(1)
            if self.step % self.log_every == 0 or self.step == self.steps:
                self._log({"event": "train", "step": self.step, **metrics})
                bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items() if isinstance(v, float)})
            if self.sample_every and (self.step % self.sample_every == 0 or self.step == self.steps):
                self.sample_grid(os.path.join(self.out, f"samples_{self.step:07d}.png"))
            if self.eval_every and (self.step % self.eval_every == 0 or self.step == self.steps):
                self.run_evaluation()
            if self.step % self.ckpt_every == 0 or self.step == self.steps:
                self.save()
        bar.close()
        if self._tb is not None:
            self._tb.close()
        return self.best
