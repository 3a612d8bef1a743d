"""Seeded random streams that a training loop checkpoints: one torch.Generator per purpose and rank."""
import hashlib

import torch


class GeneratorState:
    """A torch.Generator with state_dict/load_state_dict, so the loop checkpoints it."""

    def __init__(self, seed, device="cpu"):
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(int(seed))

    def state_dict(self):
        return {"state": self.gen.get_state()}

    def load_state_dict(self, d):
        self.gen.set_state(d["state"].cpu())  # a checkpoint loaded onto the GPU moves the state there too


def stream_seed(seed, stream, rank):
    """Rank 0: seed + stream (the single-process streams); rank r > 0: a seed derived from (seed, stream, r)."""
    if rank == 0:
        return seed + stream
    return int.from_bytes(hashlib.sha256(repr((seed, stream, rank)).encode()).digest()[:7], "little")
