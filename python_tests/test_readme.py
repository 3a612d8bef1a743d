"""The README's Python examples run as written, in a fresh interpreter (as a user would paste them)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKS = re.findall(r"```python\n(.*?)```", open(os.path.join(ROOT, "README.md")).read(), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_python_block_runs(tmp_path, i):
    code = BLOCKS[i]
    if code.lstrip().startswith(">>>"):
        pytest.skip("an interactive transcript, not a script")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    # a `print(...)  # what it prints` line promises that output: the printed lines, in order
    promised = [m.group(1).strip() for m in re.finditer(r"^\s*print\(.*\)\s+#\s*(.+)$", code, flags=re.M)]
    assert r.stdout.strip().splitlines() == promised


def test_readme_promises_some_output():
    assert any(re.search(r"^\s*print\(.*\)\s+#", b, flags=re.M) for b in BLOCKS)


def test_lazy_subpackages_work_after_a_bare_import():
    code = ("import sys, cbgan_ext; assert 'cbgan_ext.train' not in sys.modules; "
            "print(cbgan_ext.data.get_dataset, cbgan_ext.models.build_gan, cbgan_ext.train.GANTrainer, "
            "cbgan_ext.metrics.kl_to_uniform); assert 'train' in dir(cbgan_ext)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-c", "import cbgan_ext; cbgan_ext.nonexistent"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "has no attribute 'nonexistent'" in r.stderr
