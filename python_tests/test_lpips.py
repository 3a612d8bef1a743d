"""LPIPS diversity (Softlabel-GAN's LPIPS / intra-LPIPS): skipped with a reason when torchvision's AlexNet weights are
absent (never downloaded); with weights in the hub cache, the all-pairs mean equals torchmetrics' LPIPS pair by pair."""
import itertools

import pytest
import torch

from cbgan_ext.metrics import lpips as lp

pytest.importorskip("torchmetrics")


@pytest.fixture
def hub_dir(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def test_skipped_with_reason_without_weights(hub_dir):
    reason = lp.lpips_unavailable()
    assert reason.startswith("LPIPS skipped") and str(hub_dir) in reason
    with pytest.raises(RuntimeError, match="LPIPS skipped"):
        lp.LPIPSDiversity()


def _plant_random_alexnet(hub_dir):
    import torchvision
    path = lp.alexnet_weights_path()
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)


def test_all_pairs_mean_matches_torchmetrics(hub_dir):
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
    _plant_random_alexnet(hub_dir)
    assert lp.lpips_unavailable() is None
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 32, 32, generator=g) * 2 - 1
    ours = lp.LPIPSDiversity(batch=4)(x)  # batches that cut the 15 pairs unevenly
    ref_metric = LearnedPerceptualImagePatchSimilarity(net_type="alex")
    ref = [float(ref_metric(x[i:i + 1].expand(-1, 3, -1, -1), x[j:j + 1].expand(-1, 3, -1, -1)))
           for i, j in itertools.combinations(range(6), 2)]
    assert ours == pytest.approx(sum(ref) / len(ref), rel=1e-5)
    assert ours > 0
    assert lp.LPIPSDiversity()(x[:1].repeat(3, 1, 1, 1)) == pytest.approx(0.0, abs=1e-6)  # identical images
    with pytest.raises(ValueError, match="needs >= 2 images"):
        lp.LPIPSDiversity()(x[:1])


class _ToyG(torch.nn.Module):
    """Class 0 ignores z (all its images are one image); other classes vary with z."""

    def forward(self, z, y):
        x = torch.tanh(z.view(-1, 1, 32, 32))
        return torch.where((y == 0).view(-1, 1, 1, 1), torch.zeros_like(x), x)


class _ToyUnconditional(torch.nn.Module):
    def forward(self, z):
        return torch.tanh(z.view(-1, 1, 32, 32))


def test_lpips_scores_overall_and_per_class(hub_dir):
    from cbgan_ext.train.evaluate import lpips_scores
    assert lpips_scores(_ToyG(), z_dim=1024, num_classes=3, conditional=True, n=5) == {
        "lpips_skipped": lp.lpips_unavailable()}
    _plant_random_alexnet(hub_dir)
    res = lpips_scores(_ToyG(), z_dim=1024, num_classes=3, conditional=True, n=5)
    assert res["lpips_images"] == 5 and len(res["intra_lpips"]) == 3
    assert res["intra_lpips"][0] == pytest.approx(0.0, abs=1e-6) and min(res["intra_lpips"][1:]) > 0
    assert res["intra_lpips_mean"] == pytest.approx(sum(res["intra_lpips"]) / 3)
    assert 0 < res["lpips"]
    unconditional = lpips_scores(_ToyUnconditional(), z_dim=1024, n=4)
    assert "intra_lpips" not in unconditional and unconditional["lpips"] > 0
