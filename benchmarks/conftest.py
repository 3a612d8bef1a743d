"""Shared set-up for the pytest-benchmark suites (kept out of the default test paths).

Thread count: CBGAN_BENCH_THREADS (default: all cores), set before any timing so that the fused op and
its reference run under the same setting. CUDA timings synchronise inside the timed callable.
"""
import os

import pytest
import torch

import cbgan_ext

torch.set_num_threads(int(os.environ.get("CBGAN_BENCH_THREADS", os.cpu_count() or 1)))

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
