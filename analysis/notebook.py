"""Execute the text notebooks (jupytext percent ``.py``) cell by cell, without a Jupyter kernel.

The cell tagged ``parameters`` holds each notebook's defaults; ``run_notebook`` executes it and then sets
the given parameters over them (as papermill does). Every cell's printed output is kept and the executed
notebook written as ``<out>/<name>.ipynb`` (open it in Jupyter, or open the ``.py`` itself with jupytext);
the figures are PNGs the cells write into ``OUT``. A failing cell stops the run with one line naming the
notebook, the cell and the error (its traceback is in the written ``.ipynb``).
"""

from __future__ import annotations

import contextlib
import io
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ssnf.errors import SSNFError

NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"


class NotebookError(SSNFError):
    pass


@dataclass
class NotebookRun:
    path: Path
    seconds: float
    cells: int
    written: Path
    outputs: list[str] = field(default_factory=list)


def notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9]*.py"))


def run_notebook(path: str | Path, params: dict, out: str | Path) -> NotebookRun:
    import jupytext
    import nbformat

    path = Path(path)
    nb = jupytext.read(path)
    namespace: dict = {"__name__": "__main__", "__file__": str(path)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = out / f"{path.stem}.ipynb"
    started = time.perf_counter()
    texts: list[str] = []
    count = 0
    for index, cell in enumerate(nb.cells, start=1):
        if cell.cell_type != "code":
            continue
        count += 1
        buffer = io.StringIO()
        try:
            with contextlib.redirect_stdout(buffer):
                exec(compile(cell.source, f"{path.name} cell {index}", "exec"), namespace)  # noqa: S102
                if "parameters" in cell.metadata.get("tags", []):
                    namespace.update(params)
                    print("parameters: " + ", ".join(f"{k}={v!r}" for k, v in params.items()))
        except Exception as exc:  # noqa: BLE001 - reported as the notebook's failure
            cell.outputs = [nbformat.v4.new_output("error", ename=type(exc).__name__, evalue=str(exc),
                                                   traceback=traceback.format_exc().splitlines())]
            nbformat.write(nb, written)
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise NotebookError(f"{path.name}: cell {index} failed: {type(exc).__name__}: {first} "
                                f"(traceback in {written})") from exc
        text = buffer.getvalue()
        texts.append(text)
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)] if text else []
        cell.execution_count = count
    nbformat.write(nb, written)
    return NotebookRun(path, time.perf_counter() - started, count, written, texts)
