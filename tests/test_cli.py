"""The ``ssnf`` command as a user runs it: a real subprocess through the installed entry point."""

from __future__ import annotations

import subprocess
import sys

from ssnf.cli import main


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ssnf", *args], capture_output=True, text=True, timeout=300)


def test_demo_then_summary(tmp_path):
    root = tmp_path / "demo"
    proc = _run("data", "demo", "--root", str(root), "--size", "64", "--n-train", "6",
                "--n-test-good", "2", "--n-per-defect", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("demo category ready") == 2
    proc = _run("data", "summary", "--data-root", str(root), "--category", "washer", "--val-fraction", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert "train: 6 normal" in proc.stdout
    assert "test: 2 normal, 4 anomalous (color 1, contamination 1, hole 1, scratch 1); masks: yes" in proc.stdout
    assert "splits (seed 0): train 3, validation 3, test 6" in proc.stdout


def test_errors_are_one_line_without_traceback(tmp_path):
    proc = _run("data", "summary", "--data-root", str(tmp_path), "--category", "nothing")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"ssnf: error: category 'nothing' not found in {tmp_path} (found: nothing)"
    assert "Traceback" not in proc.stderr


def test_usage_errors_exit_2(capsys):
    try:
        main(["data", "frobnicate"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_train_evaluate_and_config_round_trip(tmp_path):
    import yaml

    from ssnf.config import to_dict
    from ssnf.configfile import load_config

    root = tmp_path / "demo"
    assert main(["data", "demo", "--root", str(root), "--size", "64", "--n-train", "8", "--n-test-good", "2",
                 "--n-per-defect", "1", "--categories", "weave"]) == 0
    out = tmp_path / "run"
    sets = ["data.image_size=64", "data.val_fraction=0.25", "backbone.pretrained=false", "model.hidden=16",
            "model.couplings=2", "model.heads=2", "train.epochs=1", "train.batch_size=4"]
    proc = _run("train", "--data-root", str(root), "--category", "weave", "--out", str(out), "--quiet",
                *[a for s in sets for a in ("--set", s)])
    assert proc.returncode == 0, proc.stderr
    assert "test (reported, never used to choose): image_auroc" in proc.stdout
    trained_stdout = proc.stdout
    assert {p.name for p in out.iterdir()} >= {"checkpoint.pt", "config.yaml", "metrics.json"}
    metrics = __import__("json").loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"image_auroc", "pixel_auroc", "aupro", "image_f1_max"}
    assert metrics["history"][0]["epoch"] == 1
    # the written config is a file --config accepts back, unchanged
    again = load_config(str(out / "config.yaml"), [])
    assert to_dict(again) == yaml.safe_load((out / "config.yaml").read_text()) == metrics["config"]
    proc = _run("evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--overlays", "3", "--quiet")
    assert proc.returncode == 0, proc.stderr
    overlays = sorted((out / "evaluation" / "overlays").glob("*.png"))
    assert len(overlays) == 3
    from PIL import Image

    assert Image.open(overlays[0]).size == (3 * 64, 64)
    # the scoring chosen on validation at training is what evaluate uses, unless told otherwise
    chosen = metrics["scoring"]
    assert chosen["map"] == metrics["final"]["val_map"] != "auto"
    assert f"scoring chosen on validation: pixel map {chosen['map']}" in trained_stdout
    evaluated = __import__("json").loads((out / "evaluation" / "metrics.json").read_text())
    assert evaluated["scoring"] == chosen
    proc = _run("evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--overlays", "0", "--quiet",
                "--out", str(tmp_path / "ev2"), "--set", "scoring.map=fastflow", "--set", "scoring.image_map=pixel")
    assert proc.returncode == 0, proc.stderr
    assert "scoring: pixel map fastflow, image score" in proc.stdout
    evaluated = __import__("json").loads((tmp_path / "ev2" / "metrics.json").read_text())
    assert (evaluated["scoring"]["map"], evaluated["scoring"]["image_map"]) == ("fastflow", "pixel")
    assert evaluated["scoring"]["image_score"] == chosen["image_score"]
    for bad, message in ((["--set", "loss.weight=0"], "evaluate accepts scoring keys only"),
                         (["--set", "scoring.map=heat"], "scoring.map='heat' is not one of")):
        proc = _run("evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--quiet", *bad)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_train_refuses_bad_names_in_one_line_before_training(tmp_path, capsys):
    for sets, message in (
        (["model.blocks=conv,transformer"], "unknown block 'transformer'"),
        (["model.heads=3"], "model.heads=3 does not divide model.hidden=128"),
        (["backbone.name=mobilenet_v9"], "unknown backbone 'mobilenet_v9'"),
        (["train.epochs=many"], "train.epochs must be an integer, got 'many'"),
        (["loss.form"], "expected key=value"),
    ):
        code = main(["train", "--data-root", str(tmp_path), "--category", "x", "--out", str(tmp_path / "o"),
                     *[a for s in sets for a in ("--set", s)]])
        err = capsys.readouterr().err
        assert code == 2, (sets, err)
        assert message in err and err.count("\n") == 1, err


def test_summary_reads_the_config_and_a_refused_train_leaves_no_config_behind(tmp_path):
    root = tmp_path / "demo"
    assert main(["data", "demo", "--root", str(root), "--size", "64", "--n-train", "6", "--n-test-good", "2",
                 "--n-per-defect", "1", "--categories", "washer"]) == 0
    config = tmp_path / "run.yaml"
    config.write_text(f"data:\n  root: {root}\n  category: washer\n  val_fraction: 0.5\n")
    proc = _run("data", "summary", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert "splits (seed 0): train 3, validation 3, test 6" in proc.stdout
    proc = _run("data", "summary", "--config", str(config), "--set", "data.seed=1", "--few-shot", "2")
    assert proc.returncode == 0 and "splits (seed 1): train 2, validation 3" in proc.stdout, proc.stdout + proc.stderr
    out = tmp_path / "refused"
    code = main(["train", "--config", str(config), "--category", "bolt", "--out", str(out), "--quiet"])
    assert code == 2 and not (out / "config.yaml").exists()
