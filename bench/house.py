"""The house's measures of a checkout (issue 30): tracked files and bytes, Python files over 400 lines, functions
outside tests over 60 lines, import circles among ``ssnf/`` and ``analysis/`` modules (function-level imports
count; a package's ``__init__`` re-exports do not).

    python bench/house.py [ROOT]          # ROOT: a checkout, default this one; e.g. a `git worktree add` of an old commit
"""
import ast, subprocess, sys
from pathlib import Path
root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
files = [root / f for f in subprocess.run(["git", "-C", str(root), "ls-files"], capture_output=True, text=True).stdout.split()]
tracked_bytes = sum(f.stat().st_size for f in files if f.is_file())
py = [f for f in files if f.suffix == ".py" and f.is_file()]
print(f"tracked files {len(files)}, bytes {tracked_bytes:,}; bench/results files {sum('bench/results' in str(f) for f in files)}")
big = sorted(((len(f.read_text().splitlines()), f.relative_to(root)) for f in py), reverse=True)
print("python files > 400 lines:", [(n, str(p)) for n, p in big if n > 400])
long = []
for f in py:
    tree = ast.parse(f.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > 60 and not str(f.relative_to(root)).startswith("tests/"):
                long.append((n, f"{f.relative_to(root)}:{node.name}"))
print("non-test functions > 60 lines:", sorted(long, reverse=True))
# import graph among ssnf/analysis modules (module-level and function-level imports)
mods = {}
for f in py:
    rel = f.relative_to(root)
    if rel.parts[0] not in ("ssnf", "analysis"):
        continue
    name = ".".join(rel.with_suffix("").parts)
    if name.endswith(".__init__"):
        name = name[:-9]
    mods[name] = f
edges = {m: set() for m in mods}
for m, f in mods.items():
    pkg = m if f.name == "__init__.py" else m.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(f.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            if t in mods and t != m and not (m.startswith(t + ".") and mods[t].name == "__init__.py"):
                edges[m].add(t)
# strongly connected components (Tarjan)
index, low, stack, on, sccs, i = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)
def visit(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(sorted(comp))
for v in edges:
    if v not in index: visit(v)
print("import circles (package __init__ re-exports excluded):", sccs)
