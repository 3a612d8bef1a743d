"""Atomic checkpoints and RNG state capture, shared by every trainer."""
import os
import random
import tempfile

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read (truncated, corrupt, not a checkpoint)."""


def _file_mode():
    # mkstemp creates 0600; give checkpoints the mode every other run file gets (0666 minus the umask).
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save_atomic(obj, path):
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``: a kill at any
    moment leaves either the old checkpoint or the new one, never a torn file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path, map_location="cpu"):
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises several types for a torn zip / pickle
        raise CheckpointError(f"checkpoint {path} cannot be read (truncated or corrupt?): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def rng_state():
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    # torch takes RNG states as CPU byte tensors; a checkpoint loaded onto the GPU moved them there
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def use_deterministic_algorithms():
    """torch's deterministic algorithms, process-wide. cuBLAS is deterministic only with a fixed workspace,
    which it reads from the environment when it first starts: set here unless the user chose one."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def seed_everything(seed, deterministic=True):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        use_deterministic_algorithms()
