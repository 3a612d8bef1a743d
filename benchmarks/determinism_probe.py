"""Do two uninterrupted classifier trainings agree, and does a resumed one agree with them, with and without
deterministic algorithms? `python benchmarks/determinism_probe.py cuda` (or cpu). Prints the largest weight
difference for each case. The settings are those of python_tests/test_classifier.py's resume test."""
import os
import sys
import tempfile

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts: cuBLAS reads it once
import torch  # noqa: E402

from cbgan_ext.train import train_classifier  # noqa: E402

TINY = dict(dataset="digits", depth=8, width=0.5, augment="crop", batch_size=64, lr=0.05, eval_every=0,
            lr_schedule="cosine", epochs=2, loss="drw", imbalance_ratio=5, drw_epoch=1)


def max_diff(a, b):
    A, B = torch.load(a, weights_only=True)["model"], torch.load(b, weights_only=True)["model"]
    return max(float((A[k].double() - B[k].double()).abs().max()) for k in A if A[k].is_floating_point())


def main(device):
    kw = dict(progress=False, log=lambda s: None, device=device, **TINY)
    for det in (False, True):
        torch.use_deterministic_algorithms(det, warn_only=True)
        torch.backends.cudnn.deterministic = det
        d = tempfile.mkdtemp()
        f1, f2, part = (os.path.join(d, n) for n in ("full1.pt", "full2.pt", "part.pt"))
        train_classifier(f1, **kw)
        train_classifier(f2, **kw)
        train_classifier(part, max_minutes=1e-9, **kw)  # stops after the first batch
        train_classifier(part, resume=True, **kw)
        print(f"deterministic={det}: full vs full {max_diff(f1, f2):.3g}, full vs resumed {max_diff(f1, part):.3g}",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cpu")
