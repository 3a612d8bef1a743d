import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS for the CUDA resume tests
import pytest  # noqa: E402
import torch  # noqa: E402

import cbgan_ext

DEVICES = ("cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda))


def pytest_collection_modifyitems(config, items):
    if cbgan_ext.cuda_kernels_available():
        return
    why = "no GPU visible" if not torch.cuda.is_available() else "this build has no CUDA kernels"
    skip = pytest.mark.skip(reason=f"needs_cuda: {why}")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def restore_determinism():
    """For tests that turn on torch.use_deterministic_algorithms (process-wide)."""
    was, bench = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(was, warn_only=warn)
    torch.backends.cudnn.benchmark = bench


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and the test machine is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def at_one_and_many_threads(run):
    """(run() with 1 thread, run() with ≥ 2 threads): the fused kernels must not depend on the thread count."""
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = run()
        torch.set_num_threads(max(2, n))
        b = run()
    finally:
        torch.set_num_threads(n)
    return a, b
