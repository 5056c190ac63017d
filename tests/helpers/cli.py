"""``ssnf ARGS`` run in the test's own process: ``ssnf.cli.main``, what ``python -m ssnf`` runs, with its output
captured and its exit status returned as a ``subprocess.CompletedProcess``. It spares each call the 4-5 s of CPU a
fresh interpreter spends importing torch, timm and the library; ``tests/test_cli.py`` and ``tests/test_packaging.py``
keep running the command as a real subprocess through the installed entry point."""

from __future__ import annotations

import io
import os
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import torch

from ssnf.cli import main


def run_cli(*args: str, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    out, err = io.StringIO(), io.StringIO()
    here, threads = os.getcwd(), torch.get_num_threads()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors, as the command exits on them
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)  # a command's --threads stays with the command
    return subprocess.CompletedProcess(["ssnf", *args], code, out.getvalue(), err.getvalue())
