"""--config FILE: flag values from a file, a run's own config.json read back, and the recipes in configs/."""
import glob
import json
import os

import pytest

from cbgan_ext import cli

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TINY = {"dataset": "digits", "imbalance": 10, "image_size": 32, "width": 0.125, "batch_size": 16, "steps": 3,
        "sample_every": 0, "ckpt_every": 2, "threads": 1, "no_progress": True}


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def _error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_config_values_are_defaults_and_flags_on_the_line_win(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "run"
    cfg = _write(tmp_path / "c.json", dict(TINY, method="cgan-pd", out=str(out), **{"n-dis": 2}))
    assert cli.main(["train", "--config", cfg, "--steps", "2"]) == 0
    got = json.load(open(out / "config.json"))
    assert got["method"] == "cgan-pd" and got["n_dis"] == 2 and got["width"] == 0.125
    assert got["steps"] == 2  # the line's value, not the file's 3
    assert got["dataset"]["name"] == "digits" and got["dataset"]["imbalance_ratio"] == 10


def test_a_runs_own_config_json_is_read_back(tmp_path):
    pytest.importorskip("sklearn")
    a, b = tmp_path / "a", tmp_path / "b"
    argv = ["train", "--method", "bagan", "--profile", "bagan", "--drop-fraction", "0.9", "--ae-steps", "2",
            "--lr", "3e-4", "--seed", "5", "--out", str(a)]
    for k, v in TINY.items():
        if k != "imbalance":
            argv += [cli._flag(k)] if v is True else [cli._flag(k), str(v)]
    assert cli.main(argv) == 0
    assert cli.main(["train", "--config", str(a / "config.json"), "--out", str(b)]) == 0
    ca, cb = (json.load(open(d / "config.json")) for d in (a, b))
    assert ca == cb  # every setting, the dataset and the seed came back
    assert cb["lr"] == 3e-4 and cb["seed"] == 5 and cb["ae_steps"] == 2


@pytest.mark.parametrize("content,expect", [
    ({"method": "gan", "no_such_flag": 1}, "train has no flags 'no_such_flag'"),
    ({"method": "nope"}, "--method: expected one of"),
    ({"steps": "many"}, "--steps: expected int"),
    ({"cb_reg": "yes"}, "--cb-reg expects true or false"),
    ([1, 2], "expected an object of flag names"),
    ({"threads": 1.5}, "--threads: expected int, got 1.5"),
    ({"batch_size": 16, "batch-size": 32}, "--batch-size is given twice"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, capsys, content, expect):
    cfg = _write(tmp_path / "c.json", content)
    assert cli.main(["train", "--config", cfg, "--out", str(tmp_path / "r")]) == 2
    line = _error(capsys)
    assert expect in line and line.startswith("cbgan-ext train: error: --config")


def test_config_file_checks(tmp_path, capsys):
    assert cli.main(["train", "--config", str(tmp_path / "missing.json"), "--out", str(tmp_path)]) == 2
    assert "--config: no file" in _error(capsys)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli.main(["train", "--config", str(bad), "--out", str(tmp_path)]) == 2
    assert "not valid JSON" in _error(capsys)
    assert cli.main(["eval", "--config", str(bad), "--run", str(tmp_path)]) == 2
    assert "--config: only for train, train-classifier, demo" in _error(capsys)
    y = tmp_path / "c.yaml"
    y.write_text("method: gan\n")
    try:
        import yaml  # noqa: F401
    except ImportError:
        assert cli.main(["train", "--config", str(y), "--out", str(tmp_path)]) == 2
        assert "YAML needs PyYAML" in _error(capsys)


def test_config_is_read_as_argparse_reads_the_line(tmp_path, capsys):
    """--config=FILE and an abbreviation are the same flag; the last one given is the one read."""
    good = _write(tmp_path / "good.json", {"method": "gan"})
    bad = _write(tmp_path / "bad.json", {"no_such_flag": 1})
    for argv in (["--config=" + bad], ["--conf", bad], ["--config", good, "--config", bad]):
        assert cli.main(["train", *argv, "--out", str(tmp_path / "r")]) == 2
        assert "has no flags 'no_such_flag'" in _error(capsys)


def test_a_null_out_in_the_file_still_needs_out(tmp_path, capsys):
    cfg = _write(tmp_path / "c.json", {"method": "gan", "out": None})
    with pytest.raises(SystemExit) as e:  # argparse's own one-line error
        cli.main(["train", "--config", cfg])
    assert e.value.code == 2 and "required: --out" in capsys.readouterr().err


def test_a_binary_config_file_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert cli.main(["train", "--config", str(path), "--out", str(tmp_path / "r")]) == 2
    assert "cannot be read as text" in _error(capsys)


def test_a_yaml_config_file(tmp_path):
    pytest.importorskip("yaml")
    pytest.importorskip("sklearn")
    y = tmp_path / "c.yaml"
    y.write_text("method: gan\nsteps: 2\n" + "".join(f"{k}: {str(v).lower() if v is True else v}\n"
                                                     for k, v in TINY.items() if k != "steps"))
    assert cli.main(["train", "--config", str(y), "--out", str(tmp_path / "r")]) == 0
    got = json.load(open(tmp_path / "r" / "config.json"))
    assert got["method"] == "gan" and got["steps"] == 2 and got["width"] == 0.125


def test_demo_takes_a_config_file(tmp_path, capsys):
    # the file's methods reach demo's own check: a method of another section is refused by name
    cfg = _write(tmp_path / "d.json", {"preset": "tiny", "out": "/nonexistent/x", "methods": ["softlabel-gan"]})
    assert cli.main(["demo", "--config", cfg]) == 2
    assert "run in their own section" in _error(capsys)


RECIPES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.json")))


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    pytest.importorskip("sklearn")
    path = str(tmp_path_factory.mktemp("clf") / "clf.pt")
    assert cli.main(["train-classifier", "--dataset", "digits", "--image-size", "32", "--depth", "8", "--width",
                     "0.25", "--epochs", "0.2", "--augment", "none", "--eval-every", "0", "--no-progress",
                     "--out", path]) == 0
    return path


def test_configs_folder_has_the_papers_recipes():
    names = {os.path.basename(p) for p in RECIPES}
    for study in ("cbgan-cifar10-lt100", "cbgan-cifar100-lt10", "softlabel-cifar10-lognormal"):
        assert {f"{study}.json", f"{study}-baseline.json", f"{study}-classifier.json"} <= names
    assert {"bagan-cifar10-c0-drop40.json", "bagan-cifar10-c0-drop40-baseline.json"} <= names
    readme = open(os.path.join(ROOT, "configs", "README.md")).read()
    assert all(f"configs/{n}" in readme for n in names)


@pytest.mark.parametrize("recipe", RECIPES, ids=os.path.basename)
def test_each_recipe_runs_tiny_on_cpu(tmp_path, tiny_classifier, recipe):
    """The recipe as written, shrunk by flags on the line to seconds on scikit-learn's digits."""
    cfg = json.load(open(recipe))
    n_max = "140" if cfg.get("profile") == "lognormal" else "40"  # its 3208 of 5000 scale down to every class kept
    shrink = ["--dataset", "digits", "--image-size", "32", "--n-max", n_max, "--imbalance", "4", "--device", "cpu",
              "--threads", "1", "--no-progress", "--out", str(tmp_path / "out"), "--width", "0.0625",
              "--batch-size", "16"]
    if "method" not in cfg:
        shrink += ["--epochs", "0.2", "--depth", "8", "--eval-every", "0"]
        shrink += ["--drw-epoch", "0.1"] if "drw_epoch" in cfg else []
        shrink += ["--warmup-epochs", "0.05"] if "warmup_epochs" in cfg else []
        assert cli.main(["train-classifier", "--config", recipe, *shrink]) == 0
        import torch
        got = torch.load(str(tmp_path / "out"), weights_only=True)["train_config"]
        assert got["loss"] == cfg["loss"] and got["lr"] == cfg["lr"] and got["profile"] == cfg["profile"]
        return
    shrink += ["--steps", "2", "--eval-every", "0", "--sample-every", "0", "--ckpt-every", "1"]
    if cfg["method"] == "bagan":
        shrink += ["--ae-steps", "2"]
    for key in ("classifier", "soft_labels"):
        if key in cfg:
            shrink += [cli._flag(key), tiny_classifier]
    assert cli.main(["train", "--config", recipe, *shrink]) == 0
    got = json.load(open(tmp_path / "out" / "config.json"))
    from cbgan_ext.train.options import OPTIONS
    shrunk = ("steps", "width", "batch_size", "eval_every", "sample_every", "ckpt_every", "ae_steps")
    kept = {k: v for k, v in cfg.items() if k in OPTIONS and k not in shrunk}
    assert len(kept) >= 8 and {k: got[k] for k in kept} == kept  # the recipe's own settings reached the run
    assert got["method"] == cfg["method"] and got["dataset"]["profile"] == cfg["profile"]
