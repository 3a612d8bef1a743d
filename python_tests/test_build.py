import pytest
import torch

import cbgan_ext


def test_build_info_reports_the_build():
    info = cbgan_ext.build_info()
    for key in ("cuda", "cuda_version", "cuda_archs", "openmp", "num_threads"):
        assert key in info
    if info["cuda"]:
        # kernels built with another CUDA major than torch's would not load beside it
        assert info["cuda_version"].split(".")[0] == torch.version.cuda.split(".")[0]
        assert len(info["cuda_archs"]) >= 1
    else:
        assert info["cuda_version"] is None and info["cuda_archs"] == []
    assert isinstance(info["openmp"], bool)


def test_ops_are_registered_with_the_dispatcher():
    op = torch.ops.cbgan_ext.class_balancing_loss_forward.default
    assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CPU")
    if cbgan_ext.build_info()["cuda"]:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CUDA")


def test_one_version_everywhere(capsys):
    import importlib.metadata

    import cbgan_ext
    from cbgan_ext import cli
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"cbgan-ext {cbgan_ext.__version__}"
    assert importlib.metadata.version("cbgan_ext") == cbgan_ext.__version__  # what pip installed
