"""Multi-process training on ``torch.distributed``, launched by ``torchrun``.

Under torchrun (``WORLD_SIZE`` > 1 in the environment) every trainer of the package calls ``setup``: it
starts the default process group (NCCL for CUDA devices, one device per local rank; gloo for CPUs) with a
timeout, so a rank whose peer died ends with an error instead of waiting forever. Without torchrun nothing
here does anything and the trainers run as one process.

The trainers use it as follows (see ``TrainLoop``): the batch size is global and each rank takes
``batch_size / world_size``; G and D (or the classifier) are wrapped in DistributedDataParallel, which
averages gradients and broadcasts rank 0's buffers (spectral-norm u, v; BatchNorm statistics) at every
forward; rank 0 alone writes logs, sample grids, evaluations and checkpoints; each rank's random streams are
derived from (seed, rank) and saved in the checkpoint, one entry per rank.
"""
import datetime
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

DEFAULT_TIMEOUT_S = 1800.0  # rank 0 evaluates alone while the others wait at the next collective


def launched():
    """Whether this process was started by torchrun (or another launcher) with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank():
    return dist.get_rank() if active() else 0


def world_size():
    return dist.get_world_size() if active() else 1


def is_main():
    return rank() == 0


def setup(device="cpu", timeout_s=None):
    """Start the process group when launched by torchrun; returns the device this rank trains on.

    ``device`` "cuda" (or "cuda:N") becomes ``cuda:LOCAL_RANK``; "cpu" stays. The timeout (seconds) is
    ``timeout_s``, else ``CBGAN_EXT_DIST_TIMEOUT``, else 30 minutes.
    """
    device = torch.device(device)
    if not launched():
        return device
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of torch; run without torchrun")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("distributed: --device cuda asked for, but no CUDA device is visible")
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"distributed: local rank {local} has no GPU ({torch.cuda.device_count()} visible); "
                               "use --nproc_per_node <= the number of GPUs")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if timeout_s is None:
            timeout_s = float(os.environ.get("CBGAN_EXT_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        kw = dict(device_id=device) if device.type == "cuda" else {}
        store, r, w = next(dist.rendezvous("env://", timeout=timeout))
        # torchrun's restarts (--max-restarts) keep its store: without a prefix per attempt the new ranks can
        # read the dead ranks' addresses and hang while connecting
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend, store=dist.PrefixStore(f"cbgan_ext/attempt-{attempt}", store), rank=r,
                                world_size=w, timeout=timeout, **kw)
    return device


def shutdown():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_main_first(fn):
    """fn() on each node's local rank 0 first (a download into a shared folder), then on the other ranks."""
    if not active():
        return fn()
    first = int(os.environ.get("LOCAL_RANK", "0")) == 0
    out = fn() if first else None
    dist.barrier()
    return out if first else fn()


def local_share(total, what="batch_size"):
    """This rank's share of a global count that must divide evenly."""
    w = world_size()
    if total % w:
        raise ValueError(f"{what}: the global {what} {total} does not divide over {w} ranks")
    return total // w


def wrap(module, device):
    """DistributedDataParallel around ``module`` when distributed, else ``module``."""
    if not active():
        return module
    device = torch.device(device)
    # buffers (SN u, v; BN statistics) are sent from rank 0 at every forward: DDP's default
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def all_gather_object(obj):
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src=0):
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(tensor):
    """In-place sum over ranks (no autograd); returns ``tensor``."""
    if active():
        dist.all_reduce(tensor)
    return tensor
