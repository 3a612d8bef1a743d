"""Atomic checkpoints, safe loading and RNG state capture, shared by every trainer.

Every file the package reads back (checkpoints, classifiers, autoencoders, cached soft labels) is loaded with
``torch.load(weights_only=True)``: tensors, numbers, strings and containers only, so a crafted file cannot run
code. Files that need the full unpickler (written by an older cbgan_ext, or by someone else) are refused with
one line naming the file, unless the caller trusts them: ``trust_pickle(True)``, the CLI's ``--trust-pickle``
or ``CBGAN_EXT_TRUST_PICKLE=1``.
"""
import os
import pickle
import random
import tempfile

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks, one writer per run is then the user's to keep
    fcntl = None

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read (truncated, corrupt, not a checkpoint)."""


class UnsafeFileError(CheckpointError):
    """A file that only the full unpickler reads, which can run code: refused unless trusted."""


_trust = {"pickle": os.environ.get("CBGAN_EXT_TRUST_PICKLE", "") not in ("", "0")}


def trust_pickle(enabled=True):
    """Let ``load`` fall back to the full unpickler for files ``weights_only`` refuses (only for files you
    trust: unpickling can run arbitrary code). Returns the previous setting."""
    previous, _trust["pickle"] = _trust["pickle"], bool(enabled)
    return previous


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
    # named after its target: a trainer clears only its own leftovers, not a neighbour's write in progress
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)}-", suffix=".pt", dir=folder)
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


def load(path, map_location="cpu", what="checkpoint", trust=None):
    """``torch.load(path, weights_only=True)``, with one-line errors naming ``what`` and the path. A file the
    safe loader refuses is read with the full unpickler only when ``trust`` (default: ``trust_pickle``'s
    setting) is on; otherwise ``UnsafeFileError``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path} is a directory, expected a file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{what} {path} is empty")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        name = _refused_global(str(e))
        if name is None:  # not a refused object: bytes that are no pickle at all
            raise _unreadable(what, path, e) from e
        if not (_trust["pickle"] if trust is None else trust):
            raise UnsafeFileError(
                f"{what} {path} holds Python objects ({name}) that loading would execute: a file from an older "
                "cbgan_ext or not written by it. Load it only if you trust it: --trust-pickle "
                "(or CBGAN_EXT_TRUST_PICKLE=1, or cbgan_ext.train.checkpoint.trust_pickle())") from None
    except Exception as e:  # torch raises several types for a torn zip / pickle
        raise _unreadable(what, path, e) from e
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise _unreadable(what, path, e) from e


def _unreadable(what, path, e):
    first = str(e).splitlines()[0] if str(e) else ""
    return CheckpointError(f"{what} {path} cannot be read (truncated, corrupt or not a torch file): "
                           f"{type(e).__name__}: {first}")


def _refused_global(message):
    """The object a weights-only refusal names (e.g. ``posix.system``), or None when it was no refusal."""
    for line in message.splitlines():
        words = line.split()
        if "GLOBAL" in words and words.index("GLOBAL") < len(words) - 1:
            return words[words.index("GLOBAL") + 1]
    return None


def rng_state():
    """The process's RNG states in forms ``weights_only`` loads (no numpy arrays)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    # torch takes RNG states as CPU byte tensors; a checkpoint loaded onto the GPU moved them there
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    if isinstance(n, dict):
        n = (n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    np.random.set_state(n)  # a tuple: a checkpoint of an older version, loaded with trust
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


class RunLockedError(RuntimeError):
    """Another process is writing the same run."""


class RunLock:
    """One writer per run: an advisory ``flock`` on ``path`` (a small file holding the holder's pid), taken
    before anything of the run is written. The kernel drops it when the holder exits, however it dies, so a
    lock file left by a killed run never blocks its resume. Trainers of one process share it (a pipeline
    may build a second trainer on a run before the first is gone); ``what`` names the run in the error."""

    _held = {}  # real path -> [fd, holders]

    def __init__(self, path, what):
        self.path, self.what, self.held = os.path.realpath(path), what, False

    def acquire(self):
        if self.held:
            return self
        entry = self._held.get(self.path)
        if entry is not None:
            entry[1] += 1
        elif fcntl is not None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pid = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunLockedError(f"{self.what} is being written by another process (pid {pid}, lock "
                                     f"{self.path}): wait for it to end, or write somewhere else") from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._held[self.path] = [fd, 1]
        self.held = True
        return self

    def release(self):
        if not self.held:
            return
        self.held = False
        entry = self._held.get(self.path)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self._held[self.path]
            os.close(entry[0])  # the file stays: removing it could let two later writers lock two inodes

    def __del__(self):
        try:
            self.release()
        except Exception:  # noqa: BLE001  (interpreter shutdown)
            pass


def lock_path(path):
    """The lock file of a checkpoint (or a folder's job): hidden, beside it."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.lock")
