"""The library installs without Ray and Optuna: they are the ``tune`` extra (and Optuna the ``analysis`` one), the
library's modules and CLI work without them, and ``ssnf.tune`` says in one line what to install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
LIBRARY = ["ssnf", "ssnf.cli", "ssnf.inference", "ssnf.training", "ssnf.export", "ssnf.predict"]


def project() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11's tomllib reads pyproject.toml")
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_ray_and_optuna_are_extras_not_dependencies():
    base = {Requirement(r).name.lower() for r in project()["dependencies"]}
    assert not base & {"ray", "optuna"}, f"in the base dependencies: {sorted(base & {'ray', 'optuna'})}"
    extras = {name: {Requirement(r).name.lower() for r in reqs}
              for name, reqs in project()["optional-dependencies"].items()}
    assert {"ray", "optuna"} <= extras["tune"]
    assert "optuna" in extras["analysis"]  # analysis/importance.py rebuilds an Optuna study


def run_without_ray(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``python args`` in a fresh interpreter where ``ray`` and ``optuna`` are not importable, as when they are
    not installed (``sys.modules[name] = None``: ``import`` raises ModuleNotFoundError, ``find_spec`` is None)."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules.update(ray=None, optuna=None)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_the_library_and_its_cli_work_without_ray_and_optuna(tmp_path):
    check = ("import importlib, sys\n"
             f"for name in {LIBRARY!r}:\n"
             "    importlib.import_module(name)\n"
             "try:\n"
             "    import ray\n"
             "except ImportError:\n"
             "    pass\n"
             "else:\n"
             "    sys.exit('ray was importable: the check checks nothing')\n"
             "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'optuna') and sys.modules[m])\n"
             "sys.exit(f'imported: {loaded}' if loaded else 0)\n")
    done = run_without_ray(tmp_path, "-c", check)
    assert done.returncode == 0, done.stderr[-2000:] or done.stdout[-2000:]
    done = run_without_ray(tmp_path, "-m", "ssnf", "--help")
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr[-2000:]


def test_the_sweep_without_ray_names_the_extra_in_one_line(tmp_path):
    done = run_without_ray(tmp_path, "-c", "import ssnf.tune.run")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    expected = "ImportError: ssnf.tune (the sweep) needs ray and optuna: pip install ssnf[tune]"
    assert last == expected, done.stderr[-2000:]
    # the sweep's entry point (its flags are SweepOptions', in ssnf.tune): one line, no traceback
    done = run_without_ray(tmp_path, "tune_main.py", "--help")
    assert done.returncode == 2 and done.stderr.strip() == (
        "tune_main: error: ssnf.tune (the sweep) needs ray and optuna: pip install ssnf[tune]"), done.stderr[-2000:]
