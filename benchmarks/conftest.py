"""Shared set-up for the pytest-benchmark suites (kept out of the default test paths).

Thread count: CBGAN_BENCH_THREADS (default: all cores), set before any timing so that the fused op and
its reference run under the same setting. CUDA timings synchronise inside the timed callable.

Allocator: glibc hands a freed heap top back to the OS once it exceeds a threshold that it also moves as
it goes, and the next allocation then faults every page in again. Whether a process falls into that cycle
depends on its allocation history: here it swung one process's fused DiffAugment step (B=256 3x32x32) from
1.0 to 3.0 ms (~180 vs ~1000 page faults per step). CBGAN_BENCH_MALLOC=steady (default) pins glibc's
thresholds for every row alike; =default leaves the allocator alone.
"""
import ctypes
import os

import pytest
import torch

import cbgan_ext

torch.set_num_threads(int(os.environ.get("CBGAN_BENCH_THREADS", os.cpu_count() or 1)))


def _steady_malloc():
    if os.environ.get("CBGAN_BENCH_MALLOC", "steady") != "steady":
        return "default"
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "default (no glibc)"
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    ok = libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) and libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # 32 MiB: glibc's max
    return "steady" if ok else "default (mallopt refused)"


MALLOC = _steady_malloc()

DEVICES = ("cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda))


def pytest_collection_modifyitems(config, items):
    if cbgan_ext.cuda_kernels_available():
        return
    skip = pytest.mark.skip(reason="needs_cuda: no GPU visible or no CUDA kernels in this build")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_cuda: needs a GPU")


def timed(fn, device):
    """Wrap fn so a CUDA timing includes the kernels it launched."""
    if device == "cuda":
        def run():
            out = fn()
            torch.cuda.synchronize()
            return out
        return run
    return fn


IMPLS = ["fused", "eager", "compiled"]


def implementation(op_name, impl):
    """The fused op ``cbgan_ext.ops.<op_name>``, its eager twin in ``cbgan_ext.reference``, or
    torch.compile of that twin: the three rows every suite times."""
    from cbgan_ext import ops, reference
    if impl == "fused":
        return getattr(ops, op_name)
    if impl == "eager":
        return getattr(reference, op_name)
    return torch.compile(getattr(reference, op_name), dynamic=False)
