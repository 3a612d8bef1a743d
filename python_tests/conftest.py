import pytest
import torch

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
