"""cbgan_ext: fused CPU/CUDA ops and trainers for GANs on long-tailed data.

Importing the package loads the compiled library, which registers the ops under ``torch.ops.cbgan_ext``.
"""
import torch

try:
    from . import _C
except ImportError as e:  # pragma: no cover - only without a build
    raise ImportError(
        "cbgan_ext: the compiled extension cbgan_ext._C is missing or broken (%s). Build it with "
        "`pip install --no-build-isolation .` from the repository root (see README)." % e) from e

from . import ops, reference  # noqa: E402  (ops registers fake kernels and autograd)
from . import nn  # noqa: E402
from .nn import CBRegularizer  # noqa: E402
from .nn import DiffAugment, ProjectionHead, diff_augment  # noqa: E402

__version__ = "0.1.0"


def build_info():
    """What this build contains: CUDA version and archs (None / [] when CPU-only), OpenMP, threads."""
    info = dict(_C.build_info())
    info["torch_version"] = torch.__version__
    info["num_threads"] = torch.get_num_threads()
    return info


def cuda_kernels_available():
    """True when the build has CUDA kernels and a GPU is visible."""
    return bool(_C.build_info()["cuda"]) and torch.cuda.is_available()


__all__ = ["ops", "nn", "reference", "CBRegularizer", "build_info", "cuda_kernels_available"]
__all__ += ["DiffAugment", "ProjectionHead", "diff_augment"]

# Heavier subpackages load on first use, so `cbgan_ext.data.get_dataset(...)` works after `import cbgan_ext`
# without making every import pay for numpy/tqdm/clean-fid.
_LAZY = ("data", "models", "train", "metrics", "pipeline", "cli")


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'cbgan_ext' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
