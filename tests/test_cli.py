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
