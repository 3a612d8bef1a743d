"""Which CUDA tests have not run on a GPU since their code changed.

    python benchmarks/cuda_coverage.py              list them, against benchmarks/results/cuda-covered.json
    python benchmarks/cuda_coverage.py record OUT   write OUT: the hashes of the sources as they are now (what
                                                    gpu_check.sh does after its test stage; commit OUT as
                                                    benchmarks/results/cuda-covered.json once its tests pass)

An op's test files (test_diff_augment.py, ...) depend on that op's sources (every file whose name holds the
op's name) and on the shared kernel files; every other test file with CUDA cases depends on all sources.
A test file is stale when it or one of its sources differs from the recorded hashes.
"""
import glob
import hashlib
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = os.path.join(ROOT, "benchmarks", "results", "cuda-covered.json")
OPS = ("class_balancing", "diff_augment", "projection", "spectral_norm")
OP_TESTS = {"test_class_balancing.py": "class_balancing", "test_regularizer.py": "class_balancing",
            "test_diff_augment.py": "diff_augment", "test_projection.py": "projection",
            "test_spectral_norm.py": "spectral_norm", "test_ops_sn_autograd.py": "spectral_norm"}


def sources():
    pats = ("csrc/**/*.h", "csrc/**/*.cpp", "csrc/**/*.cu", "csrc/**/*.cuh", "cbgan_ext/**/*.py",
            "python_tests/*.py", "setup.py")
    files = sorted({os.path.relpath(p, ROOT) for pat in pats for p in glob.glob(os.path.join(ROOT, pat),
                                                                                 recursive=True)})
    out = {}
    for f in files:
        with open(os.path.join(ROOT, f), "rb") as fh:
            out[f] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _depends(test_file, path):
    if path == f"python_tests/{test_file}" or path == "python_tests/conftest.py":
        return True
    if path.startswith("python_tests/"):
        return False
    op = OP_TESTS.get(test_file)
    if op is None:
        return True
    shared = path.startswith("csrc/") and not any(o in path for o in OPS)
    return op in path or shared or path == "setup.py"


def stale_tests(recorded, now):
    changed = {f for f in set(recorded) | set(now) if recorded.get(f) != now.get(f)}
    tests = sorted(os.path.basename(f) for f in now if f.startswith("python_tests/test_"))
    return {t: sorted(c for c in changed if _depends(t, c)) for t in tests if any(_depends(t, c) for c in changed)}


def cuda_cases(test_files):
    """The needs_cuda test ids in those files (collected, not run)."""
    if not test_files:
        return []
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", "needs_cuda",
           *[os.path.join("python_tests", t) for t in test_files]]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return [line for line in res.stdout.splitlines() if "::" in line]


def main(argv):
    if argv[:1] == ["record"] and len(argv) == 2:
        with open(argv[1], "w") as f:
            json.dump({"files": sources()}, f, indent=1, sort_keys=True)
        print(f"cuda_coverage: recorded {len(sources())} source hashes in {argv[1]}")
        return 0
    if argv:
        print(__doc__)
        return 2
    if not os.path.exists(RECORD):
        print(f"cuda_coverage: no record at {RECORD}: every CUDA test is unrun")
        return 1
    with open(RECORD) as f:
        rec = json.load(f)
    stale = stale_tests(rec["files"], sources())
    cases = cuda_cases(list(stale))
    by_file = {}
    for c in cases:
        by_file.setdefault(c.split("::")[0], []).append(c)
    print(f"CUDA tests not run on a GPU since their code changed (record: {rec.get('about', RECORD)}): "
          f"{len(cases)} in {len(by_file)} files")
    for t, why in stale.items():
        n = len(by_file.get(f"python_tests/{t}", []))
        if n:
            print(f"  {t}: {n} cases; changed: {', '.join(why[:4])}{' ...' if len(why) > 4 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
