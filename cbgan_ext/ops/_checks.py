"""Checks shared by the fake (meta) kernels of every op."""


def same_device(op, **tensors):
    """Raise, naming op and the devices, unless every tensor (None skipped; lists flattened) is on one device.

    The fake kernels also serve the Meta dispatch key, which wins over CPU: a call mixing a meta tensor with CPU
    tensors lands here with real CPU tensors, and without this check would return uninitialised CPU memory.
    """
    first = None
    for name, t in tensors.items():
        items = t if isinstance(t, (list, tuple)) else [t]
        for i, x in enumerate(items):
            if x is None:
                continue
            label = f"{name}[{i}]" if isinstance(t, (list, tuple)) else name
            if first is None:
                first = (label, x.device)
            elif x.device != first[1]:
                raise RuntimeError(f"{op}: {first[0]} and {label} must be on the same device, got {first[1]} and "
                                   f"{x.device}")
