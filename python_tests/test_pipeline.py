"""The main job end to end at its tiny preset (scikit-learn's digits, tiny networks): every stage runs, the
report has every main-job method, and a second invocation resumes instead of retraining."""
import ast
import json
import os

import pytest

from cbgan_ext import cli, pipeline
from cbgan_ext.train.methods import get_method

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread")


def test_main_job_tiny_preset_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--preset", "tiny", "--out", str(out), "--seeds", "0,1"]) == 0
    methods = pipeline.main_job_methods()
    assert set(methods) >= {"gan", "cbgan"}
    for s in (0, 1):
        d = out / f"seed{s}"
        res = json.load(open(d / "results.json"))
        assert list(res["results"]) == list(methods)
        for m in methods:
            r = res["results"][m]
            assert sum(r["histogram"]) == res["config"]["final_samples"] and r["kl"] >= 0 and r["fd"] > 0
            assert r["step"] == res["config"]["gan"]["steps"]  # the rule: the final generator
            assert (d / f"samples_{m}.png").exists() and (d / m / "checkpoint.pt").exists()
        assert res["ratios"]["cbgan"]["kl_ratio"] == pytest.approx(res["results"]["gan"]["kl"] /
                                                                   res["results"]["cbgan"]["kl"])
        report = open(d / "report.md").read()
        assert "cbgan" in report and "final EMA generator" in report
        b = res["bagan"]  # the BAGAN section: three methods on the data with class 0 dropped, then augment-eval
        assert list(b["eval"]) == list(pipeline.BAGAN_METHODS) and b["class_counts"][0] < b["class_counts"][1]
        for m in pipeline.BAGAN_METHODS:
            assert 0 <= b["eval"][m]["minority_accuracy"][0] <= 1 and (d / "bagan" / m / "checkpoint.pt").exists()
        rows = b["augment"]["rows"]
        assert list(rows) == ["plain", "oversample", "mirror", *pipeline.BAGAN_METHODS]
        assert rows["plain"]["added"] == 0 and rows["bagan"]["added"] == b["class_counts"][1] - b["class_counts"][0]
        assert "## BAGAN section" in report and "| oversample |" in report
        sl = res["softlabel"]  # the Softlabel section: three methods on the same data, one evaluator
        assert list(sl["eval"]) == list(pipeline.SOFTLABEL_METHODS)
        for m in pipeline.SOFTLABEL_METHODS:
            e = sl["eval"][m]
            assert e["fd"] > 0 and 0 <= e["class_consistency"] <= 1 and e["step"] == sl["settings"]["gan"]["steps"]
            assert len(e["intra_fd"]) == len(sl["class_counts"]) and e["intra_fd_mean"] > 0
            assert ("intra_lpips" in e) != ("lpips_skipped" in e)
            assert (d / "softlabel" / m / "checkpoint.pt").exists() and (d / "softlabel" / f"samples_{m}.png").exists()
        assert json.load(open(d / "softlabel" / "softlabel-gan" / "config.json"))["soft_labels"].endswith(
            "softlabel_classifier.pt")
        assert (d / "softlabel" / "intra_fd.png").exists()
        assert "## Softlabel section" in report and "| softlabel-gan |" in report
    summary = open(out / "summary.md").read()
    assert "| cbgan KL ratio (gan / cbgan) |" in summary and "mean" in summary
    assert "| BAGAN section: classifier minority accuracy, oversample |" in summary
    assert "| Softlabel section: softlabel-gan FD-annotator ↓ |" in summary
    assert "| Softlabel section: diffaug-gan intra-FD of the 3 smallest classes ↓ |" in summary
    # seeds differ: the job is not the same run twice
    r0, r1 = (json.load(open(out / f"seed{s}" / "results.json"))["results"]["gan"]["histogram"] for s in (0, 1))
    assert r0 != r1
    # a second invocation finds every stage done
    done = ("gan/checkpoint.pt", "bagan/bagan/checkpoint.pt", "bagan/augment/bagan/classifier.pt",
            "softlabel/softlabel-gan/checkpoint.pt", "softlabel/softlabel_classifier.pt")
    before = [os.path.getmtime(out / "seed0" / p) for p in done]
    assert cli.main(["demo", "--preset", "tiny", "--out", str(out / "seed0"), "--seed", "0"]) == 0
    assert [os.path.getmtime(out / "seed0" / p) for p in done] == before


def test_softlabel_section_alone_skips_cbgan_classifier(tmp_path):
    out = tmp_path / "sl"
    assert cli.main(["demo", "--preset", "tiny", "--out", str(out), "--sections", "softlabel"]) == 0
    res = json.load(open(out / "results.json"))
    assert res["results"] == {} and list(res["classifiers"]) == ["annotator"]
    assert not (out / "classifier.pt").exists() and (out / "softlabel" / "softlabel_classifier.pt").exists()
    report = open(out / "report.md").read()
    assert "## Softlabel section" in report and "## CBGAN section" not in report
    cfg = pipeline.resolve_config("tiny")
    clf = dict(dataset=cfg["dataset"], imbalance=cfg["imbalance"], image_size=cfg["image_size"], seed=0, threads=1)
    settings = dict(cfg["softlabel"]["classifier"], profile="exp")
    pipeline._classifier(str(out / "softlabel" / "softlabel_classifier.pt"), settings=settings, **clf)  # finished
    with pytest.raises(ValueError, match="finished classifier of other settings .*epochs: 1 there, 3 now"):
        pipeline._classifier(str(out / "softlabel" / "softlabel_classifier.pt"), settings=dict(settings, epochs=3),
                             **clf)


def _third_party_imports():
    names = set()
    for folder, _, files in os.walk(os.path.join(ROOT, "cbgan_ext")):
        for f in files:
            if f.endswith(".py"):
                tree = ast.parse(open(os.path.join(folder, f)).read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        names |= {a.name.split(".")[0] for a in node.names}
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        names.add(node.module.split(".")[0])
    return names


def test_setup_declares_every_third_party_import():
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    declared = {d.lower() for d in project["dependencies"]}
    extras = {d.lower() for group in project["optional-dependencies"].values() for d in group}
    dist = {"cleanfid": "clean-fid", "PIL": "pillow", "sklearn": "scikit-learn", "numpy": "numpy", "scipy": "scipy",
            "tqdm": "tqdm", "matplotlib": "matplotlib", "prdc": "prdc", "torchmetrics": "torchmetrics",
            "yaml": "pyyaml"}
    provided = {"torch", "torchvision"}  # the user's own build (torchvision also comes with clean-fid)
    stdlib = set(__import__("sys").stdlib_module_names) | {"cbgan_ext"}
    for mod in sorted(_third_party_imports() - stdlib - provided):
        assert mod in dist, f"cbgan_ext imports {mod}: add it to pyproject.toml and to this map"
        assert dist[mod] in declared or dist[mod] in extras, f"{dist[mod]} is not declared in pyproject.toml"
    assert not any(d.startswith("torch") for d in declared)


def test_softlabel_report_orders_classes_by_training_count_and_survives_missing_values(tmp_path):
    counts = [5, 50, 1, 20]
    ev = {"softlabel-gan": {"fd": 3.0, "intra_fd": [1.0, 2.0, 3.0, 4.0], "intra_fd_mean": 2.5, "intra_fd_std": 1.1,
                            "class_consistency": 0.5, "lpips_skipped": "LPIPS skipped: no weights"},
          "diffaug-gan": {"fd": 4.0, "intra_fd": [None, 2.0, 3.0, None], "intra_fd_mean": None,
                          "intra_fd_std": None, "class_consistency": None}}
    assert pipeline.minor_classes(counts) == [2, 0, 3]
    sl = {"class_counts": counts, "classes": ["a", "b", "c", "d"], "eval": ev, "soft_label_classifier": {},
          "settings": {"profile": "lognormal", "eval_samples": 40, "gan": pipeline._SOFTLABEL["gan"]}}
    lines = pipeline._softlabel_lines(sl)
    rows = [line for line in lines if line.startswith("| ") and line.split(" | ")[0][2:] in "abcd"]
    assert [r.split(" | ")[0][2:] for r in rows] == ["b", "d", "a", "c"]  # largest class first
    assert rows[0] == "| b | 50 | 2.00 | 2.00 |" and rows[2] == "| a | 5 | 1.00 | n/a |"
    table = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| softlabel-gan") or
             line.startswith("| diffaug-gan")}
    assert " | 2.67 | " in table["softlabel-gan"]  # intra-FD of classes 2, 0, 3: (3 + 1 + 4) / 3
    assert "n/a ± n/a | n/a | n/a |" in table["diffaug-gan"]  # a class unknown: no minor-class mean
    assert "LPIPS skipped: no weights." in lines
    pipeline.plot_intra_fd(str(tmp_path / "p.png"), ev, counts, sl["classes"])
    assert (tmp_path / "p.png").stat().st_size > 0


def test_cached_eval_recomputes_when_its_key_changes(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"fd": float(len(calls))}
    path = str(tmp_path / "eval.json")
    key = dict(step=10, annotator_sha256="ab", n=100)
    assert pipeline._cached_eval(path, key, compute)["fd"] == 1.0
    assert pipeline._cached_eval(path, dict(key), compute)["fd"] == 1.0 and len(calls) == 1
    assert pipeline._cached_eval(path, dict(key, step=20), compute)["fd"] == 2.0  # the run was extended
    assert pipeline._cached_eval(path, dict(key, step=20, annotator_sha256="cd"), compute)["fd"] == 3.0


def test_demo_refuses_methods_of_other_sections(capsys):
    assert cli.main(["demo", "--preset", "tiny", "--out", "/nonexistent/x", "--methods", "softlabel-gan"]) == 2
    assert "run in their own section" in capsys.readouterr().err
    assert cli.main(["demo", "--preset", "tiny", "--out", "/nonexistent/x", "--methods", "gan",
                     "--sections", "softlabel"]) == 2
    assert "--sections has no cbgan" in capsys.readouterr().err


BAGAN_AE = ("ae_steps", "ae_lr", "ae_beta1")  # the section's autoencoder settings, for bagan only


def test_default_preset_is_the_recorded_settings():
    """The default preset's settings are the ones the docs' recordings ran with, read from their own files: the
    cbgan section (docs/main-job), the BAGAN and Softlabel sections (docs/bagan, docs/softlabel: the default job's
    own output)."""
    docs = os.path.join(ROOT, "docs")
    default = pipeline.resolve_config("default")
    # how often a classifier is tested does not touch its training: the recordings tested every epoch
    for c in (default["classifier"], default["annotator"], default["softlabel"]["classifier"]):
        assert c.pop("eval_every") == 0
    rec = json.load(open(os.path.join(docs, "main-job", "seed0", "results.json")))["config"]
    for c in (rec["classifier"], rec["annotator"]):
        assert c.pop("eval_every", 0) == 0
    # nor do the GAN's evaluation, sample and checkpoint cadences (a resume may change them)
    for c in (default["gan"], rec["gan"]):
        for k in ("eval_every", "sample_every", "ckpt_every", "log_every"):
            c.pop(k, None)
    for k in ("gan", "classifier", "annotator", "final_samples", "imbalance"):
        assert default[k] == rec[k], k
    b = default["bagan"]
    for s in (0, 1, 2):
        res = json.load(open(os.path.join(docs, "bagan", f"seed{s}", "results.json")))
        assert res["config"]["bagan"] == json.loads(json.dumps(b)), s
        for m in b["methods"]:
            c = json.load(open(os.path.join(docs, "bagan", f"seed{s}", f"config_{m}.json")))
            own = pipeline.bagan_gan_settings(b, m)
            assert {k: c[k] for k in own} == own, (s, m)
            assert set(BAGAN_AE) <= set(own) if m == "bagan" else not set(BAGAN_AE) & set(own)
        aug = res["bagan"]["augment"]
        assert list(aug["rows"]) == [*b["augment_rows"], *b["augment_methods"]]
    sl = default["softlabel"]
    for s in (0, 1, 2):
        res = json.load(open(os.path.join(docs, "softlabel", f"seed{s}", "results.json")))
        res["config"]["softlabel"]["classifier"].pop("eval_every", None)
        assert res["config"]["softlabel"] == json.loads(json.dumps(sl)), s
        assert list(res["softlabel"]["eval"]) == list(sl["methods"]), s
        for m in sl["methods"]:
            c = json.load(open(os.path.join(docs, "softlabel", f"seed{s}", f"config_{m}.json")))
            assert {k: c[k] for k in sl["gan"]} == sl["gan"], (s, m)
            assert (c.get("soft_labels") is not None) == get_method(m).needs_soft_labels, (s, m)
    # BAGAN's autoencoder settings go to the method with that stage only
    assert set(BAGAN_AE) <= set(b["gan"]) and get_method("bagan").pre_stages
    assert not get_method("acgan").pre_stages


def test_sections_run_only_their_configured_methods_and_rows(tmp_path, monkeypatch):
    tiny = json.loads(json.dumps(pipeline.PRESETS["tiny"]))
    tiny["bagan"].update(methods=["bagan", "acgan"], augment_rows=["plain", "oversample"], augment_methods=["bagan"])
    tiny["softlabel"]["methods"] = ["diffaug-gan"]
    monkeypatch.setitem(pipeline.PRESETS, "tiny", tiny)
    out = tmp_path / "sub"
    assert cli.main(["demo", "--preset", "tiny", "--out", str(out), "--sections", "bagan,softlabel"]) == 0
    res = json.load(open(out / "results.json"))
    assert list(res["bagan"]["eval"]) == ["bagan", "acgan"]
    assert list(res["bagan"]["augment"]["rows"]) == ["plain", "oversample", "bagan"]
    assert not (out / "bagan" / "minority-gan").exists() and not (out / "bagan" / "augment" / "acgan").exists()
    assert list(res["softlabel"]["eval"]) == ["diffaug-gan"] and not (out / "softlabel" / "softlabel-gan").exists()
    report = open(out / "report.md").read()
    assert "| acgan |" in report and "| minority-gan |" not in report and "| mirror |" not in report


@pytest.mark.parametrize("flag,value", [("--steps", "5"), ("--lam", "2"), ("--weighting", "paper"),
                                        ("--gan-width", "0.5"), ("--final-samples", "10"),
                                        ("--classifier-epochs", "1")])
def test_demo_refuses_cbgan_section_flags_without_that_section(capsys, flag, value):
    argv = ["demo", "--preset", "tiny", "--out", "/nonexistent/x", "--sections", "bagan,softlabel", flag, value]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{flag}: set the cbgan section" in err[0]


def test_demo_device_reaches_every_training_and_evaluation(tmp_path, monkeypatch):
    """--device goes to every stage: each call is given it by name (a call that left it out would show None)."""
    from cbgan_ext.train import augment_eval as ae_mod, gan as gan_mod
    seen = []

    def spy(name, fn):
        def wrapped(*a, **kw):
            seen.append((name, str(kw.get("device"))))
            return fn(*a, **kw)
        return wrapped
    monkeypatch.setattr(pipeline, "GANTrainer", spy("GANTrainer", pipeline.GANTrainer))
    monkeypatch.setattr(pipeline, "train_classifier", spy("train_classifier", pipeline.train_classifier))
    monkeypatch.setattr(ae_mod, "augment_eval", spy("augment_eval", ae_mod.augment_eval))
    monkeypatch.setattr(gan_mod, "evaluate_run", spy("evaluate_run", gan_mod.evaluate_run))
    monkeypatch.setattr(pipeline.Evaluator, "for_dataset_config",
                        spy("Evaluator", pipeline.Evaluator.for_dataset_config))
    out = tmp_path / "dev"
    pipeline.run(str(out), preset="tiny", jobs=1, progress=False, device="cpu:0")  # the API takes it as "cpu"
    assert {n for n, _ in seen} == {"GANTrainer", "train_classifier", "augment_eval", "evaluate_run", "Evaluator"}
    assert all(d == "cpu" for _, d in seen), [x for x in seen if x[1] != "cpu"]
    res = json.load(open(out / "results.json"))
    assert res["config"]["device"] == "cpu" and res["machine"]["cores"] >= 1 and res["machine"]["torch"]


def test_demo_refuses_a_device_this_machine_lacks(capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert cli.main(["demo", "--preset", "tiny", "--out", "/nonexistent/x", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda: no CUDA device is visible here" in err[0]
    for bad in ("tpu", "cpu:0"):
        assert cli.main(["demo", "--preset", "tiny", "--out", "/nonexistent/x", "--device", bad]) == 2
        assert "--device: expected cpu, cuda or cuda:N" in capsys.readouterr().err


@pytest.mark.needs_cuda
def test_demo_runs_on_cuda(tmp_path):
    out = tmp_path / "cuda"
    assert cli.main(["demo", "--preset", "tiny", "--out", str(out), "--sections", "bagan,softlabel",
                     "--device", "cuda"]) == 0
    res = json.load(open(out / "results.json"))
    assert res["config"]["device"] == "cuda" and list(res["softlabel"]["eval"]) == list(pipeline.SOFTLABEL_METHODS)
