"""GAN methods by name. The registry: each module below registers its methods on import."""
from .base import Method, get_method, method_names, register
from . import unconditional, cgan_projection, softlabel, bagan  # noqa: F401,E402  (the registry entries)

__all__ = ["Method", "get_method", "method_names", "register"]
