"""``python -m analysis``: select (with confirmation), importance, honest evaluation, notebooks.

Errors end in one line (``analysis: error: ...``) and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence

from analysis.notebook import CELL_TIMEOUT_S
from ssnf.errors import SSNFError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis", description="Analyse ssnf sweeps from their Parquet results.")
    sub = p.add_subparsers(dest="command", required=True)
    results_help = "experiment folders (<storage>/<name>), their results/ folders, cloud URIs or globs; " \
                   "a confirmation run's experiment as well, to confirm"

    s = sub.add_parser("select", help="the config to deploy per category: provisional, or confirmed over new seeds")
    s.add_argument("results", nargs="+", help=results_help)
    s.add_argument("--out", required=True, help="folder for <category>.yaml, selection.parquet, candidates.parquet")
    s.add_argument("--k", type=int, default=3, help="candidates per category (default 3)")
    s.add_argument("--no-baseline", action="store_true",
                   help="leave the sweep's baseline trial (the default config) out of the candidates")
    s.add_argument("--categories", help="comma-separated (default: every category in the results)")
    s.add_argument("--max-ms", type=float, default=0.0, metavar="MS",
                   help="only detectors within MS per image at batch 1 (as measured in the sweep) can be chosen")
    s.add_argument("--max-gflops", type=float, default=0.0, metavar="GFLOP", help="likewise for GFLOP per image")

    i = sub.add_parser("importance", help="parameter importance per category (fANOVA, PED-ANOVA)")
    i.add_argument("results", nargs="+", help=results_help)
    i.add_argument("--categories", help="comma-separated (default: every category)")
    i.add_argument("--at", default="auto", type=_at,
                   help="objective: 'final' (full-budget trials' last val_score), an epoch (every trial that reached "
                        "it), or 'auto' (final where 8 trials trained the full budget, else the deepest epoch 8 reached)")
    i.add_argument("--out", help="also write the table as CSV here")

    h = sub.add_parser("honest", help="validation against test: Spearman rho and the val-selected vs best-on-test gap")
    h.add_argument("results", nargs="+", help=results_help)

    n = sub.add_parser("notebooks", help="execute every notebook of analysis/notebooks on these results")
    n.add_argument("results", nargs="+", help=results_help)
    n.add_argument("--out", required=True, help="folder for the executed notebooks and their PNGs")
    n.add_argument("--references", help="CSV of reference figures (default: analysis/references.csv)")
    n.add_argument("--only", help="comma-separated notebook names (default: all)")
    n.add_argument("--max-ms", type=float, default=0.0, metavar="MS",
                   help="06_cost: the budget drawn and selected within (default 0: none)")
    n.add_argument("--timeout", type=int, default=CELL_TIMEOUT_S, metavar="S",
                   help=f"seconds any one cell may run before the notebook fails (default {CELL_TIMEOUT_S}; 0: no limit)")
    return p


def _at(text: str) -> str:
    if text in ("auto", "final") or (text.isdigit() and int(text) >= 1):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: expected auto, final or an epoch (1, 2, ...)")


def _categories(text: str | None) -> list[str] | None:
    return [c for c in text.split(",") if c] if text else None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")  # files only; a notebook opened in Jupyter keeps its own backend
    started = time.perf_counter()
    try:
        if args.command == "notebooks":
            return _notebooks(args, started)
        from ssnf.results import read_results

        results = read_results(args.results)
        if args.command == "select":
            from analysis.selection import select, summary, write_selection

            for flag in ("max_ms", "max_gflops"):
                if getattr(args, flag) < 0:
                    raise SSNFError(f"--{flag.replace('_', '-')}={getattr(args, flag):g} must be 0 (no bound) or positive")
            selection = select(results, k=args.k, categories=_categories(args.categories), baseline=not args.no_baseline,
                               budget={"max_ms": args.max_ms, "max_gflops": args.max_gflops})
            written = write_selection(selection, args.out)
            print(summary(selection))
            print("\nwrote " + ", ".join(str(p) for p in written))
            if not selection.table["confirmed"].all():
                print(f"provisional picks: confirm them with  python tune_main.py --confirm {args.out}/candidates.parquet "
                      "--name <sweep>-confirm  then  python -m analysis select <sweep> <confirmation> --out ...")
        elif args.command == "importance":
            import pandas as pd

            from analysis.importance import by_category, markdown

            tables = []
            for found in by_category(results, _categories(args.categories), args.at):
                print(f"{found.category}: objective = {found.objective}")
                if found.table is None:  # too few trials in this category: said, and the others go on
                    print(f"  {found.note}")
                else:
                    tables.append(found.table.assign(objective=str(found.at)))
            if not tables:
                raise SSNFError("no category has enough trials for an importance (see above)")
            table = pd.concat(tables, ignore_index=True)
            print(markdown(table))
            if args.out:
                table.to_csv(args.out, index=False)
                print(f"wrote {args.out}")
        elif args.command == "honest":
            from analysis.honest import honest, markdown

            print(markdown(honest(results.trials)))
            print("(reported, never used to choose)")
    except SSNFError as exc:
        print(f"analysis: error: {exc}", file=sys.stderr)
        return 2
    print(f"({args.command}: {time.perf_counter() - started:.1f} s)")
    return 0


def _notebooks(args: argparse.Namespace, started: float) -> int:
    from analysis.compare import REFERENCES
    from analysis.notebook import notebooks, run_notebook
    from ssnf.results import read_results

    read_results(args.results)  # bad input: one line before any notebook runs
    params = {"RESULTS": list(args.results), "OUT": args.out, "REFERENCES": args.references or str(REFERENCES),
              "MAX_MS": args.max_ms}
    only = _categories(args.only)
    for path in notebooks():
        if only and path.stem not in only and path.stem.split("_", 1)[-1] not in only:
            continue
        run = run_notebook(path, params, args.out, timeout=args.timeout)
        print(f"{path.name}: {run.cells} cells in {run.seconds:.1f} s -> {run.written}")
    print(f"(notebooks: {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
