"""Random images in the shape of Fashion-MNIST-LT (1x32x32, K classes), for the trainer benchmarks."""
import torch


class RandomImages(torch.utils.data.Dataset):
    def __init__(self, n=2048, K=10, channels=1):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, channels, 32, 32, generator=g) * 2 - 1
        self.labels = torch.randint(0, K, (n,), generator=g)
        self.class_counts = torch.bincount(self.labels, minlength=K).tolist()
        self.imbalance_ratio = 100.0

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])
