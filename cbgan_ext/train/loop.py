"""The shared training loop: every trainer subclasses ``TrainLoop`` and supplies ``train_step`` and
``evaluate``.

The loop provides a progress bar, a JSONL metrics log (and TensorBoard when installed), sample grids,
periodic evaluation with best-checkpoint selection, a time limit, and atomic checkpoints with exact resume:
models, optimizers, EMA, extra state (e.g. the CB regularizer), the data/noise generators and the global
RNG states are all saved, so a run killed at step s and resumed gives the same weights at step n as an
uninterrupted run. A resume checks that the run's settings (``config``) match the checkpoint's, drops the
log records written after the checkpoint (they are about to be re-run) and removes temporary files a kill
during a checkpoint write left behind.

Under torchrun (``cbgan_ext.train.distributed``) every rank runs the loop; rank 0 alone writes the config,
the log, sample grids, evaluations and checkpoints. A checkpoint holds each rank's random streams (the
extra states named in ``per_rank_state`` and the global RNGs), gathered at save, and every rank resumes
from it with its own; time-based decisions (the time limit, time-based checkpoints) are rank 0's, broadcast
so that all ranks stop and save at the same step.
"""
import copy
import glob
import json
import math
import os
import sys
import time

import torch
from tqdm import tqdm

from . import checkpoint as ckpt
from . import distributed as dist

_TB_HINTED = False  # the missing-tensorboard hint is printed once per process


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


class ConfigMismatchError(ValueError):
    """A run directory holds a checkpoint of other settings than the ones asked for."""


def _json_safe(value):
    """Non-finite floats as null: bare NaN/Infinity is not JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _canonical(config):
    return json.loads(json.dumps(config, default=str))


class TrainLoop:
    """Subclasses set ``self.modules`` (name → nn.Module), ``self.optimizers`` (name → optimizer) and may
    set ``self.ema`` and ``self.extra_state`` (name → object with state_dict/load_state_dict), then call
    ``run()``. ``self.config`` is what a resume must match, except the keys in ``resume_may_change``."""

    resume_may_change = ("steps", "annotator", "max_minutes")
    settings_added_later = {}  # key: the value a run saved before the key existed had
    per_rank_state = ()  # extra_state keys that differ between ranks (their random streams)

    def __init__(self, out, steps, *, seed=0, log_every=50, sample_every=500, eval_every=1000,
                 ckpt_every=500, select="min", select_key=None, progress=True, device="cpu", max_minutes=None,
                 ckpt_every_s=None, steps_per_epoch=None, ckpt_path=None, log_path=None,
                 config_path="config.json", tensorboard=True):
        self.out, self.steps, self.seed = out, int(steps), int(seed)
        self.ckpt_every_s, self.steps_per_epoch = ckpt_every_s, steps_per_epoch
        self.config_path = None if config_path is None else os.path.join(out, config_path)
        self.tensorboard = tensorboard
        self.log_every, self.sample_every = int(log_every), int(sample_every)
        self.eval_every, self.ckpt_every = int(eval_every), int(ckpt_every)
        self.select, self.select_key = select, select_key
        self.rank, self.world_size = dist.rank(), dist.world_size()
        self.is_main = self.rank == 0
        self.progress, self.device = progress and self.is_main, torch.device(device)
        self.max_minutes = max_minutes
        self.modules, self.optimizers, self.extra_state = {}, {}, {}
        self.ema = None
        self.step = 0
        self.best = None
        self.config = {}
        self.stopped_early = False
        os.makedirs(out, exist_ok=True)
        self.ckpt_path = ckpt_path or os.path.join(out, "checkpoint.pt")
        self._lock = None
        if self.is_main:  # under torchrun rank 0 writes, so rank 0 holds the lock
            what = self.ckpt_path if config_path is None else f"run directory {out}"
            self._lock = ckpt.RunLock(ckpt.lock_path(self.ckpt_path), what).acquire()
        self.best_path = os.path.join(out, "best.pt")
        self.log_path = log_path or os.path.join(out, "metrics.jsonl")
        self._tb = None

    # ---- to be provided by subclasses -------------------------------------------------------------
    def train_step(self, step):
        raise NotImplementedError

    def evaluate(self):
        return {}

    def sample_grid(self, path):
        pass

    def on_fresh_start(self):
        """Called on every rank when there is no checkpoint to resume (a trainer's pre-stages run here)."""

    def on_epoch_end(self, epoch):
        """With ``steps_per_epoch``: called after the last step of each epoch (and after the final step);
        returns metrics to log (event "epoch"), before that step's checkpoint is written."""
        return {}

    # ---- state --------------------------------------------------------------------------------------
    def state_dict(self):
        """The whole state; this rank's random streams are the top-level ones."""
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

    def _rank_state(self):
        return {"extra": {k: self.extra_state[k].state_dict() for k in self.per_rank_state if k in self.extra_state},
                "rng": ckpt.rng_state()}

    def _restore_rank_state(self, state):
        """Rank r takes entry r of a checkpoint written by ``world_size`` ranks. A finished loop (BAGAN's
        autoencoder stage, run in one process before a torchrun adversarial stage) draws from no stream again,
        so it may be resumed by another number of ranks."""
        ranks = state.get("ranks")
        n = len(ranks) if ranks else 1
        if n != self.world_size:
            if self.step >= self.steps:
                return
            raise ConfigMismatchError(f"{self.ckpt_path} was written by {n} rank(s); this run has "
                                      f"{self.world_size}: resume with the same --nproc_per_node x nodes")
        if ranks:
            mine = ranks[self.rank]
            for k, v in mine["extra"].items():
                self.extra_state[k].load_state_dict(v)
            ckpt.set_rng_state(mine["rng"])

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
        self._restore_rank_state(state)

    def save(self, path=None, all_ranks=True):
        """Write a checkpoint (rank 0). With ``all_ranks`` (every rank must call it then) each rank's random
        streams are gathered into it, so that a resume restores all of them."""
        distributed = all_ranks and self.world_size > 1
        if not (self.is_main or distributed):
            return
        state = self.state_dict()  # on every rank: a trainer may reduce its running sums here
        ranks = dist.all_gather_object(self._rank_state()) if distributed else None
        if not self.is_main:
            return
        if ranks:
            state["ranks"] = ranks
        if os.path.exists(self.log_path):  # every record up to this step on disk before the checkpoint says so
            with open(self.log_path, "a") as f:
                os.fsync(f.fileno())
        ckpt.save_atomic(state, path or self.ckpt_path)

    def saved_config(self, state):
        return state.get("config")

    def resume_ignores(self):
        """Config keys that need not match on resume besides ``resume_may_change`` (settings not read)."""
        return set()

    def check_config(self, saved, source):
        """Raise ConfigMismatchError naming every key whose value differs between ``saved`` and this run."""
        old, new = _canonical(saved or {}), _canonical(self.config)
        if old:  # a run saved before a setting existed had that setting's default
            old = {**_canonical(self.settings_added_later), **old}
        skip = set(self.resume_may_change) | self.resume_ignores()
        diff = sorted(k for k in set(old) | set(new) if k not in skip and old.get(k) != new.get(k))
        if diff:
            what = ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in diff)
            raise ConfigMismatchError(f"{source} holds a run whose settings differ ({what}); use another --out, "
                                      "or the same settings to resume it")

    def _read_checkpoint(self):
        """Rank 0 reads the checkpoint (None when there is none) and sends it to every rank, so the ranks
        resume from the same state even without a shared file system; its errors are raised on every rank."""
        state, error = None, None
        if self.is_main:
            folder = os.path.dirname(os.path.abspath(self.ckpt_path))
            # left by a kill during a write of this run's files (other files of the folder may be mid-write)
            for target in {self.ckpt_path, getattr(self, "best_path", None)} - {None}:
                for tmp in glob.glob(os.path.join(folder, f".tmp-{glob.escape(os.path.basename(target))}-*.pt")):
                    os.unlink(tmp)
            try:
                if os.path.exists(self.ckpt_path):
                    state = ckpt.load(self.ckpt_path, map_location="cpu" if self.world_size > 1 else self.device)
            except Exception as e:  # noqa: BLE001  (re-raised below, on every rank)
                error = e
        if self.world_size > 1:
            state, error = dist.broadcast_object((state, error))
        if error is not None:
            raise error
        return state

    def try_resume(self):
        state = self._read_checkpoint()
        if state is None:
            self._truncate_log(0)
            self.on_fresh_start()
            return False
        self.check_config(self.saved_config(state), self.ckpt_path)
        self.load_state_dict(state)
        self._truncate_log(self.step)
        self._log({"event": "resumed", "step": self.step})
        return True

    def _truncate_log(self, step):
        """Keep the records up to ``step``: the steps after it are re-run and logged again."""
        if not self.is_main or not os.path.exists(self.log_path):
            return
        keep, torn = [], 0
        with open(self.log_path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    torn += 1  # a line torn by a kill: past the checkpoint (the log is synced before each one)
                    continue
                if rec.get("step", 0) <= step:
                    keep.append(line if line.endswith("\n") else line + "\n")
        if torn:
            print(f"{self.log_path}: dropped {torn} unreadable record(s); records after step {step} are "
                  "written again as the run continues", file=sys.stderr, flush=True)
        tmp = self.log_path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, self.log_path)

    # ---- logging ------------------------------------------------------------------------------------
    def _log(self, record):
        if not self.is_main:
            return
        record = _json_safe({"time": round(time.time(), 3), **record})
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "time"):
                    self._tb.add_scalar(k, v, record.get("step", self.step))

    def _open_tensorboard(self):
        if not self.tensorboard or not self.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # optional: say once per process how to get it
            global _TB_HINTED
            if not _TB_HINTED:
                print("cbgan_ext: TensorBoard logging is off (tensorboard is not installed; pip install tensorboard, "
                      "or the package's [tensorboard] extra); the log is in metrics.jsonl", file=sys.stderr)
                _TB_HINTED = True
            self._tb = None
            return
        self._tb = SummaryWriter(os.path.join(self.out, "tb"))

    def _is_better(self, value):
        if self.best is None:
            return True
        return value < self.best["value"] if self.select == "min" else value > self.best["value"]

    def run_evaluation(self):
        """Rank 0 evaluates (and keeps best.pt); the other ranks wait at their next collective."""
        if not self.is_main:
            return {}
        metrics = self.evaluate()
        self._log({"event": "eval", "step": self.step, **metrics})
        key = self.select_key
        if key and key in metrics and self._is_better(metrics[key]):
            self.best = {"step": self.step, "key": key, "value": metrics[key], "metrics": metrics}
            self.save(self.best_path, all_ranks=False)
        return metrics

    # ---- the loop -----------------------------------------------------------------------------------
    def release_lock(self):
        """Let another process write this run (``run`` does it when it ends)."""
        if self._lock is not None:
            self._lock.release()

    def run(self):
        try:
            return self._run()
        finally:
            self.release_lock()

    def _run(self):
        resumed = self.try_resume()
        if self.config_path and self.is_main:  # on a resume too: the file may be missing or damaged
            with open(self.config_path + ".tmp", "w") as f:
                json.dump(_json_safe(_canonical(self.config)), f, indent=1)
            os.replace(self.config_path + ".tmp", self.config_path)
        if resumed and self.step > self.steps and self.is_main:
            print(f"{self.ckpt_path}: the checkpoint is at step {self.step}, past the {self.steps} asked for: "
                  "nothing to train (it keeps its steps)", file=sys.stderr, flush=True)
        self._open_tensorboard()
        deadline = None if not self.max_minutes else time.time() + 60.0 * float(self.max_minutes)
        last_save = time.time()
        bar = tqdm(total=self.steps, initial=self.step, disable=not self.progress, dynamic_ncols=True,
                   desc=os.path.basename(os.path.normpath(self.ckpt_path if self.config_path is None else self.out)))
        while self.step < self.steps:
            for m in self.modules.values():
                m.train()
            metrics = self.train_step(self.step)
            self.step += 1
            bar.update(1)
            if metrics and (self.step % self.log_every == 0 or self.step == self.steps):
                self._log({"event": "train", "step": self.step, **metrics})
                bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items() if isinstance(v, float)})
            spe = self.steps_per_epoch
            epoch_end = bool(spe) and (self.step % spe == 0 or self.step == self.steps)
            if epoch_end:
                record = self.on_epoch_end((self.step - 1) // spe)
                if record:
                    self._log({"event": "epoch", "step": self.step, **record})
            if self.sample_every and self.is_main and (self.step % self.sample_every == 0 or self.step == self.steps):
                self.sample_grid(os.path.join(self.out, f"samples_{self.step:07d}.png"))
            if self.eval_every and (self.step % self.eval_every == 0 or self.step == self.steps):
                self.run_evaluation()
            now = time.time()
            out_of_time = deadline is not None and now >= deadline and self.step < self.steps
            due = self.ckpt_every_s and now - last_save >= self.ckpt_every_s
            if self.world_size > 1 and (deadline is not None or self.ckpt_every_s):
                out_of_time, due = dist.broadcast_object((bool(out_of_time), bool(due)))
            if self.step % self.ckpt_every == 0 or self.step == self.steps or out_of_time or due or epoch_end:
                self.save()
                last_save = time.time()
            if out_of_time:
                self.stopped_early = True
                self._log({"event": "time-limit", "step": self.step, "max_minutes": self.max_minutes})
                break
        bar.close()
        if self._tb is not None:
            self._tb.close()
        return self.best
