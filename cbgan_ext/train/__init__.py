"""Trainers: one per method on a shared loop (checkpoint, EMA, logging)."""
from .loop import EMA, TrainLoop

__all__ = ["EMA", "TrainLoop"]
