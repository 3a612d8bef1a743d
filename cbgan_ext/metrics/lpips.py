"""LPIPS diversity, Softlabel-GAN's LPIPS and intra-LPIPS: the mean LPIPS distance over every pair i < j of n
generated images (higher is more varied). As the released evaluation: AlexNet LPIPS, all pairs, 100 images overall
and per class; unlike it, exactly 100 images (it takes whole batches) and, overall, balanced labels (it draws them
at random).

torchmetrics' LPIPS carries its own linear layers, but its AlexNet backbone is torchvision's pretrained one, which
this package never downloads: without those weights in torch's hub cache the metric is skipped with a reason.
"""
import os

import torch


def alexnet_weights_path():
    from torchvision.models import AlexNet_Weights
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(AlexNet_Weights.DEFAULT.url))


def lpips_unavailable():
    """None when LPIPS can run offline, else a one-line reason."""
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity  # noqa: F401
    except ImportError:
        return "LPIPS skipped: torchmetrics is not installed (pip install .[metrics])"
    path = alexnet_weights_path()
    if not os.path.exists(path):
        return f"LPIPS skipped: torchvision's pretrained AlexNet weights are not at {path} (never downloaded here)"
    return None


class LPIPSDiversity:
    """``self(images)``: mean LPIPS (AlexNet) over all pairs i < j of images in [−1, 1], [N, C, H, W] (one channel
    is repeated to three). Raises with ``lpips_unavailable()``'s reason when the backbone is missing."""

    def __init__(self, device="cpu", batch=500):
        reason = lpips_unavailable()
        if reason:
            raise RuntimeError(reason)
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
        self.net = LearnedPerceptualImagePatchSimilarity(net_type="alex").net.to(device).eval()
        self.device, self.batch = torch.device(device), int(batch)

    @torch.no_grad()
    def pair_distances(self, images, i, j):
        """LPIPS(images[i[p]], images[j[p]]) for each p; pairs are gathered a batch at a time (all pairs of 100
        images at 128 px would take ~2 GB)."""
        out = []
        for s in range(0, len(i), self.batch):
            x, y = (images[t[s:s + self.batch]].to(self.device).float() for t in (i, j))
            if x.shape[1] == 1:
                x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
            out.append(self.net(x, y).reshape(-1).cpu())
        return torch.cat(out) if out else torch.empty(0)

    def __call__(self, images):
        n = images.shape[0]
        if n < 2:
            raise ValueError(f"LPIPSDiversity: needs >= 2 images, got {n}")
        i, j = torch.triu_indices(n, n, offset=1)
        return float(self.pair_distances(images, i, j).double().mean())
