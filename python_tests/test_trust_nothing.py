"""Trust nothing a file or a flag says. Loading never runs code: every file the package reads goes through
torch.load(weights_only=True), and a file that needs the full unpickler is refused with one line naming it,
unless --trust-pickle says otherwise. One writer per run. Every argument checked before any work."""
import glob
import json
import os
import shutil

import numpy as np
import pytest
import torch

from cbgan_ext import cli
from cbgan_ext.data import get_dataset
from cbgan_ext.train import checkpoint as ckpt
from cbgan_ext.train import train_classifier
from cbgan_ext.train.classifier import soft_labels

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = ["--dataset", "digits", "--image-size", "32"]
TINY = ["--steps", "2", "--width", "0.125", "--batch-size", "8", "--ckpt-every", "1", "--no-progress"]


class Payload:
    """Unpickling this creates the directory ``marker``: proof that loading ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    d = tmp_path_factory.mktemp("safe")
    ann = str(d / "ann.pt")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_classifier(ann, progress=False, log=lambda s: None, dataset="digits", image_size=32, depth=8,
                         width=0.25, epochs=1, augment="none", batch_size=64, eval_every=0)
        for method, extra in (("cgan-pd", []), ("bagan", ["--ae-steps", "2"])):
            argv = ["train", *DATA, "--method", method, "--out", str(d / method), *TINY, "--annotator", ann, *extra]
            assert cli.main(argv) == 0
        soft_labels(ann, get_dataset("digits", "train", image_size=32))
    finally:
        torch.set_num_threads(n)
    return d


def test_every_file_the_package_writes_loads_with_weights_only(made):
    files = glob.glob(str(made / "**" / "*.pt"), recursive=True)
    names = {os.path.basename(f).split(".softlabels-")[0] + (".softlabels" if ".softlabels-" in f else "")
             for f in files}
    assert {"ann.pt", "ann.pt.softlabels", "checkpoint.pt", "autoencoder.pt", "gaussians.pt"} <= names
    for f in files:
        torch.load(f, weights_only=True)  # raises on any pickled object outside tensors and containers


def test_rng_state_round_trips_through_a_safe_file(tmp_path):
    np.random.seed(5)
    torch.manual_seed(5)
    ckpt.save_atomic({"rng": ckpt.rng_state()}, tmp_path / "r.pt")
    want = (np.random.rand(3), torch.rand(3))
    np.random.seed(0)
    torch.manual_seed(0)
    ckpt.set_rng_state(ckpt.load(tmp_path / "r.pt")["rng"])
    got = (np.random.rand(3), torch.rand(3))
    assert np.array_equal(want[0], got[0]) and torch.equal(want[1], got[1])


def _poison(path, marker, base=None):
    """A file at ``path`` whose unpickling creates ``marker``: ``base``'s content plus one pickled object."""
    obj = {"payload": Payload(marker)}
    if base is not None:
        obj = dict(torch.load(base, weights_only=True), payload=Payload(marker))
    torch.save(obj, path)


def _copy_run(made, tmp, name="cgan-pd"):
    dst = tmp / name
    shutil.copytree(made / name, dst)
    return dst


# (name, set-up returning argv) — each set-up poisons exactly the file the command will load.
def _eval_run(made, tmp, m):
    run = _copy_run(made, tmp)
    _poison(run / "best.pt", m, base=made / "cgan-pd" / "best.pt")
    return ["eval", "--run", str(run), "--n", "10", "--annotator", str(made / "ann.pt")], run / "best.pt"


def _sample_run(made, tmp, m):
    run = _copy_run(made, tmp)
    _poison(run / "best.pt", m, base=made / "cgan-pd" / "best.pt")
    return ["sample", "--run", str(run), "--n", "2", "--out", str(tmp / "s.pt")], run / "best.pt"


def _augment_eval_run(made, tmp, m):
    run = _copy_run(made, tmp, "bagan")
    _poison(run / "best.pt", m, base=made / "bagan" / "best.pt")
    return ["augment-eval", "--run", str(run), "--out", str(tmp / "aug"), "--epochs", "1", "--no-progress"], \
        run / "best.pt"


def _resume(made, tmp, m):
    run = _copy_run(made, tmp)
    _poison(run / "checkpoint.pt", m, base=made / "cgan-pd" / "checkpoint.pt")
    argv = ["train", *DATA, "--method", "cgan-pd", "--out", str(run), *TINY, "--annotator", str(made / "ann.pt")]
    return argv, run / "checkpoint.pt"


def _classifier_flag(flag, method):
    def setup(made, tmp, m):
        bad = tmp / "clf.pt"
        _poison(bad, m, base=made / "ann.pt")
        argv = ["train", *DATA, "--method", method, "--out", str(tmp / "r"), *TINY, flag, str(bad)]
        if flag != "--annotator":
            argv += ["--annotator", str(made / "ann.pt")]
        return argv, bad
    return setup


def _config_annotator(made, tmp, m):
    run = _copy_run(made, tmp)
    bad = tmp / "ann-in-config.pt"
    _poison(bad, m, base=made / "ann.pt")
    cfg = json.load(open(run / "config.json"))
    cfg["annotator"] = str(bad)
    json.dump(cfg, open(run / "config.json", "w"))
    state = torch.load(run / "best.pt", weights_only=True)
    state["config"]["annotator"] = str(bad)
    torch.save(state, run / "best.pt")
    return ["eval", "--run", str(run), "--n", "10"], bad


def _classifier_resume(made, tmp, m):
    out = tmp / "c.pt"
    _poison(out, m, base=made / "ann.pt")
    return ["train-classifier", *DATA, "--out", str(out), "--epochs", "1", "--depth", "8", "--resume",
            "--no-progress"], out


def _classifier_extra(made, tmp, m):
    extra = tmp / "extra.pt"
    _poison(extra, m)
    return ["train-classifier", *DATA, "--out", str(tmp / "c.pt"), "--epochs", "1", "--depth", "8", "--extra",
            str(extra), "--no-progress"], extra


def _demo_annotator(made, tmp, m):
    out = tmp / "demo"
    out.mkdir()
    _poison(out / "annotator.pt", m, base=made / "ann.pt")
    return ["demo", "--out", str(out), "--preset", "tiny", "--threads", "1"], out / "annotator.pt"


LOAD_PATHS = {
    "eval --run": _eval_run,
    "sample --run": _sample_run,
    "augment-eval --run": _augment_eval_run,
    "train resume": _resume,
    "train --classifier (cbgan)": _classifier_flag("--classifier", "cbgan"),
    "train --annotator": _classifier_flag("--annotator", "gan"),
    "train --soft-labels": _classifier_flag("--soft-labels", "softlabel-gan"),
    "annotator named in a run's config": _config_annotator,
    "train-classifier --resume": _classifier_resume,
    "train-classifier --extra": _classifier_extra,
    "demo's annotator.pt": _demo_annotator,
}


@pytest.mark.parametrize("case", list(LOAD_PATHS))
def test_no_load_path_runs_a_pickled_payload(made, tmp_path, capsys, case):
    marker = tmp_path / "ran"
    argv, poisoned = LOAD_PATHS[case](made, tmp_path, marker)
    capsys.readouterr()
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert not marker.exists(), f"{case}: loading ran the payload"
    if case == "demo's annotator.pt":  # the job's earlier stages print progress before the annotator's turn
        err = err[-1:]
    assert rc == 1 and len(err) == 1, (rc, err)
    assert str(poisoned) in err[0] and "--trust-pickle" in err[0] and "mkdir" in err[0]


def test_trust_pickle_loads_an_older_file_and_is_off_again_afterwards(made, tmp_path, capsys):
    run = _copy_run(made, tmp_path)
    for name in ("best.pt", "checkpoint.pt"):  # an older version's form: numpy's RNG state pickled as is
        state = torch.load(run / name, weights_only=True)
        state["rng"]["numpy"] = np.random.get_state()
        torch.save(state, run / name)
    argv = ["sample", "--run", str(run), "--n", "2", "--out", str(tmp_path / "s.pt")]
    capsys.readouterr()
    assert cli.main(argv) == 1
    assert "--trust-pickle" in capsys.readouterr().err
    assert cli.main(argv + ["--trust-pickle"]) == 0 and (tmp_path / "s.pt").exists()
    assert cli.main(argv) == 1  # the flag lasts one command
    # and a run in the older form resumes with it, its numpy RNG state restored
    train = ["train", *DATA, "--method", "cgan-pd", "--out", str(run), *TINY[:1], "3", *TINY[2:],
             "--annotator", str(made / "ann.pt"), "--trust-pickle"]
    assert cli.main(train) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 3


@pytest.mark.parametrize("content,what", [(b"", "is empty"), (b"not a torch file at all", "cannot be read"),
                                          ("truncated", "cannot be read")])
def test_unreadable_classifier_files_are_named(made, tmp_path, capsys, content, what):
    bad = tmp_path / "clf.pt"
    if content == "truncated":
        content = open(made / "ann.pt", "rb").read()[:2000]
    bad.write_bytes(content)
    argv = ["train", *DATA, "--method", "gan", "--out", str(tmp_path / "r"), *TINY, "--annotator", str(bad)]
    capsys.readouterr()
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and what in err[0], err


def test_a_run_and_a_classifier_are_not_taken_for_each_other(made, tmp_path, capsys):
    capsys.readouterr()
    argv = ["train", *DATA, "--method", "gan", "--out", str(tmp_path / "r"), *TINY,
            "--annotator", str(made / "cgan-pd" / "best.pt")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "not a cbgan_ext classifier checkpoint" in err and "GAN run" in err
    run = tmp_path / "looks-like-a-run"
    run.mkdir()
    shutil.copy(made / "ann.pt", run / "checkpoint.pt")
    assert cli.main(["sample", "--run", str(run), "--n", "2"]) == 1
    err = capsys.readouterr().err
    assert "not a checkpoint of a cbgan-ext train run" in err and "classifier" in err


# ------------------------------------------------------------------------------------------ one writer per run

def _holder(lock_file):
    """A process that holds the lock of ``lock_file`` (as a running training does) until killed."""
    import subprocess
    import sys
    code = ("import sys, time; from cbgan_ext.train import checkpoint as c; "
            "lock = c.RunLock(sys.argv[1], 'x').acquire(); print('held', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code, str(lock_file)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_is_refused_and_a_killed_holder_does_not_block(made, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = _holder(ckpt.lock_path(run / "checkpoint.pt"))
    argv = ["train", *DATA, "--method", "gan", "--out", str(run), *TINY, "--annotator", str(made / "ann.pt")]
    try:
        capsys.readouterr()
        assert cli.main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"run directory {run}" in err[0] and f"pid {holder.pid}" in err[0], err
        assert sorted(os.listdir(run)) == [".checkpoint.pt.lock"]  # nothing of the run was written
    finally:
        holder.kill()
        holder.wait()
    assert cli.main(argv) == 0  # the killed holder's lock file stays, its lock does not
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 2


def test_a_classifier_and_a_main_job_take_the_lock_too(tmp_path, capsys):
    out = tmp_path / "c.pt"
    holder = _holder(ckpt.lock_path(out))
    try:
        capsys.readouterr()
        argv = ["train-classifier", *DATA, "--out", str(out), "--epochs", "1", "--depth", "8", "--no-progress"]
        assert cli.main(argv) == 1
        assert f"pid {holder.pid}" in capsys.readouterr().err and not out.exists()
    finally:
        holder.kill()
        holder.wait()
    job = tmp_path / "job"
    job.mkdir()
    holder = _holder(ckpt.lock_path(job / "job"))
    try:
        assert cli.main(["demo", "--out", str(job), "--preset", "tiny", "--threads", "1"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1:] and f"main-job directory {job}" in err[-1] and os.listdir(job) == [".job.lock"]
    finally:
        holder.kill()
        holder.wait()


def test_trainers_of_one_process_share_the_lock(tmp_path):
    a = ckpt.RunLock(tmp_path / "l", "a").acquire()
    b = ckpt.RunLock(tmp_path / "l", "b").acquire()
    a.release()
    b.release()
    holder = _holder(tmp_path / "l")  # released in this process: another may take it
    holder.kill()
    holder.wait()


# ------------------------------------------------------------------------------------------ checks before work

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")


@pytest.mark.parametrize("argv,expected", [
    (["train", "--dataset", "nope"], "--dataset: expected one of"),
    (["train", "--method", "gan", "--device", "bogus"], "--device: expected cpu, cuda or cuda:N"),
    pytest.param(["train", "--method", "gan", "--device", "cuda"], "no CUDA device is visible", marks=NO_CUDA),
    (["train", "--profile", "bagan", "--minority-class", "99"], "--minority-class: fashion-mnist has classes 0..9"),
    (["train", "--method", "gan", "--imbalance", "100", "--n-max", "7000"], "--n-max: the 'exp' profile at n_max 7000"),
    (["train-classifier", "--n-max", "0"], "--n-max: expected a positive integer, got 0"),
    (["train-classifier", "--imbalance", "1e9"], "--n-max/--imbalance/--profile: long_tailed_counts: profile 'exp'"),
    (["train", "--method", "gan", "--image-size", "7"], "--image-size: build_gan: sndcgan is defined at 32"),
    (["train", "--method", "bagan", "--image-size", "30"], "--image-size: BAGAN: image_size must be"),
    (["train", "--method", "gan", "--annotator", "{tmp}/missing.pt"], "--annotator: {tmp}/missing.pt does not exist"),
    (["train", "--method", "cbgan", "--classifier", "{tmp}"], "--classifier: {tmp} is a directory"),
    (["train", "--method", "gan", "--sync-bn"], "--sync-bn: only under torchrun"),
    (["train-classifier", "--depth", "7"], "--depth: expected 6n+2"),
    (["train-classifier", "--resume"], "--resume: nothing to resume"),
    (["train-classifier", "--drw-epoch", "3"], "--drw-epoch: is not used by loss 'ce'"),
    (["train-classifier", "--loss", "drw", "--epochs", "4", "--drw-epoch", "4"], "--drw-epoch: 4 is not before"),
    (["train-classifier", "--extra", "{tmp}"], "--extra: {tmp} is a directory"),
    (["eval", "--run", "{tmp}", "--device", "bogus"], "--device: expected"),
    (["eval", "--run", "{tmp}", "--plot", "{tmp}/no/p.png"], "--plot: folder {tmp}/no does not exist"),
    (["sample", "--run", "{tmp}", "--out", "{tmp}/no/s.png"], "--out: folder {tmp}/no does not exist"),
    (["augment-eval", "--run", "{tmp}", "--out", "{tmp}/a", "--device", "cuda:7"], "--device cuda:7"),
])
def test_arguments_are_checked_before_any_work(tmp_path, capsys, argv, expected):
    out = tmp_path / "out"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] in ("train", "train-classifier"):
        argv += ["--out", str(out if argv[0] == "train" else out / "c.pt"), "--steps" if argv[0] == "train"
                 else "--epochs", "1"] if "--epochs" not in argv else ["--out", str(out / "c.pt")]
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected.replace("{tmp}", str(tmp_path)) in err[0], err
    assert not out.exists()


def test_paths_in_a_runs_config_are_absolute(made, tmp_path, monkeypatch):
    monkeypatch.chdir(made)
    run = tmp_path / "r"
    argv = ["train", *DATA, "--method", "gan", "--out", str(run), *TINY, "--annotator", "ann.pt"]
    assert cli.main(argv) == 0
    assert json.load(open(run / "config.json"))["annotator"] == str(made / "ann.pt")
    monkeypatch.chdir(tmp_path)  # eval finds the annotator from anywhere
    assert cli.main(["eval", "--run", str(run), "--n", "10", "--lpips-images", "0"]) == 0
