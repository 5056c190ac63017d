"""Execute the text notebooks (jupytext percent ``.py``) in a Jupyter kernel, as papermill and nbmake do.

jupytext turns the ``.py`` into a notebook; the given parameters go into a cell tagged
``injected-parameters`` right after the cell tagged ``parameters`` (papermill's convention: the defaults
stay, the injected values override them); nbclient runs every cell in an IPython kernel of this very
interpreter (``sys.executable``, the environment passed through: no ``jupyter kernelspec install`` needed,
and no other kernel named ``python3`` can stand in) with the working directory of the caller, so relative
paths mean what they meant on the command line. The executed notebook is written as ``<out>/<name>.ipynb``
with every output: printed text, stderr and warnings, and the figures embedded (the kernel draws with
matplotlib's inline backend); the cells write the same figures as PNGs into ``OUT``. A failing cell, or
one that runs past ``timeout`` seconds, stops the run with one line naming the notebook and the cell (the
traceback is in the written ``.ipynb``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ssnf.errors import SSNFError

NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
INLINE = "module://matplotlib_inline.backend_inline"  # figures shown at the end of each cell, into the notebook
CELL_TIMEOUT_S = 600
PARAMETERS_TAG, INJECTED_TAG = "parameters", "injected-parameters"


class NotebookError(SSNFError):
    pass


@dataclass
class NotebookRun:
    path: Path
    seconds: float
    cells: int  # code cells executed (the notebook's own: the injected parameters not counted)
    written: Path
    outputs: list[str] = field(default_factory=list)  # each code cell's stdout


def notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9]*.py"))


def inject_parameters(nb, params: dict) -> int:
    """Insert a cell tagged ``injected-parameters`` that sets ``params`` (Python literals; paths become
    strings) after the cell tagged ``parameters`` (at the top where there is none), replacing an injected
    cell left from an earlier run. Returns its index."""
    import nbformat

    nb.cells = [c for c in nb.cells if INJECTED_TAG not in c.metadata.get("tags", [])]
    tagged = [i for i, c in enumerate(nb.cells) if PARAMETERS_TAG in c.metadata.get("tags", [])]
    at = tagged[0] + 1 if tagged else 0
    literals = {name: os.fspath(v) if isinstance(v, os.PathLike) else v for name, v in params.items()}
    source = "# Parameters\n" + "".join(f"{name} = {value!r}\n" for name, value in literals.items())
    nb.cells.insert(at, nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED_TAG]}))
    return at


def _kernel_manager(sockets: Path):
    """A kernel manager that knows one kernel, ipykernel in this interpreter: with no kernel folders to
    search, jupyter_client falls back to ipykernel's own spec, whose command is ``sys.executable``. It talks
    to the kernel over Unix sockets in the private folder ``sockets`` (no port opened; TCP on Windows)."""
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    wire = {"transport": "tcp"} if os.name == "nt" else {"transport": "ipc", "ip": str(sockets / "kernel")}
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]), **wire)


@dataclass
class _Position:
    """Which cell the kernel is running (nbclient's ``on_cell_start`` hook), to name it when it fails."""

    index: int = -1

    def __call__(self, cell, cell_index: int) -> None:
        self.index = cell_index


def run_notebook(path: str | Path, params: dict, out: str | Path, timeout: int = CELL_TIMEOUT_S) -> NotebookRun:
    """Execute the notebook at ``path`` with ``params`` in a fresh kernel; write ``<out>/<name>.ipynb``.
    ``timeout``: seconds any one cell may run (0: no limit)."""
    try:
        import jupytext
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    except ModuleNotFoundError as exc:
        raise NotebookError(f"notebooks need {exc.name}: pip install -e '.[analysis]'") from None

    path = Path(path)
    nb = jupytext.read(path)
    place = {id(cell): number for number, cell in enumerate(nb.cells, start=1)}  # in the .py, as a reader counts
    inject_parameters(nb, params)
    numbers = [place.get(id(cell), 0) for cell in nb.cells]  # 0: the injected cell
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = out / f"{path.stem}.ipynb"
    position = _Position()
    env = {**os.environ, "MPLBACKEND": INLINE}
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="ssnf-kernel-") as sockets:
            client = NotebookClient(nb, km=_kernel_manager(Path(sockets)), timeout=timeout, on_cell_start=position)
            client.execute(cwd=str(Path.cwd()), env=env, cleanup_kc=True)
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
        number = numbers[position.index] if position.index >= 0 else -1
        cell = {0: "the injected parameters", -1: "the kernel's start"}.get(number, f"cell {number}")
        if isinstance(exc, CellExecutionError):
            first = exc.evalue.splitlines()[0] if exc.evalue else ""
            what = f"failed: {exc.ename}: {first}"
        elif isinstance(exc, CellTimeoutError):
            what = f"ran longer than the timeout ({timeout} s per cell)"
        else:
            what = "failed: the kernel died"
        raise NotebookError(f"{path.name}: {cell} {what} (traceback in {written})") from exc
    except RuntimeError as exc:  # nbclient's words for a kernel that did not start or answer
        if position.index >= 0:
            raise
        raise NotebookError(f"{path.name}: no Python kernel started ({exc}); "
                            f"does `{sys.executable} -m ipykernel_launcher --help` work?") from exc
    finally:
        nbformat.write(nb, written)
    code = [c for c in nb.cells if c.cell_type == "code" and INJECTED_TAG not in c.metadata.get("tags", [])]
    stdout = ["".join(o.get("text", "") for o in c.outputs if o.output_type == "stream" and o.name == "stdout")
              for c in code]
    return NotebookRun(path, time.perf_counter() - started, len(code), written, stdout)
