"""Matplotlib figures of a sweep (each function returns a figure; ``save`` writes it as a PNG)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.overview import status_counts  # noqa: E402
from analysis.selection import full_budget, is_baseline, pareto_front, sweep_rows  # noqa: E402

STATUS_COLORS = {"completed": "tab:green", "stopped": "tab:blue", "diverged": "tab:orange", "error": "tab:red"}


def save(fig, out: str | Path, name: str) -> Path:
    path = Path(out) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    if not _interactive():  # in Jupyter the figure stays open, so it also shows inline
        plt.close(fig)
    return path


def _interactive() -> bool:
    return "inline" in matplotlib.get_backend() or "ipympl" in matplotlib.get_backend()


def _grid(n: int, width: float = 4.5, height: float = 3.2):
    fig, axes = plt.subplots(1, max(1, n), figsize=(width * max(1, n), height), squeeze=False)
    return fig, list(axes[0])


def history(trials: pd.DataFrame):
    """Optimization history per category: each trial's last val_score in start order (colour = status),
    and the running best among full-budget trials."""
    sweep = sweep_rows(trials)
    cats = list(dict.fromkeys(sweep["category"]))
    fig, axes = _grid(len(cats))
    for ax, cat in zip(axes, cats):
        rows = sweep[sweep["category"] == cat].sort_values("started_at").reset_index(drop=True)
        for status, color in STATUS_COLORS.items():
            sel = rows[rows["status"] == status]
            ax.scatter(sel.index, sel["final_val_score"], c=color, label=status, s=18)
        full = rows["final_val_score"].where((rows["status"] == "completed"))
        ax.step(rows.index, full.cummax().ffill(), where="post", c="k", lw=1, label="best full-budget")
        ax.set(title=cat, xlabel="trial (start order)", ylabel="val_score (last epoch)")
    axes[0].legend(fontsize=7)
    return fig


def statuses(trials: pd.DataFrame):
    """Trials per status and category (stacked bars)."""
    counts = status_counts(trials)
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(counts), 3))
    bottom = np.zeros(len(counts))
    for status, color in STATUS_COLORS.items():
        if status in counts:
            ax.bar(counts.index, counts[status], bottom=bottom, color=color, label=status)
            bottom += counts[status].to_numpy()
    ax.set(ylabel="trials", title="trials per status")
    ax.legend(fontsize=7)
    return fig


def rungs(trials: pd.DataFrame):
    """ASHA's rungs: how many trials trained at least e epochs, per category."""
    sweep = sweep_rows(trials)
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for cat in dict.fromkeys(sweep["category"]):
        runs = sweep[sweep["category"] == cat]["epochs_run"]
        epochs = np.arange(1, int(runs.max()) + 1) if len(runs) else np.array([])
        ax.plot(epochs, [(runs >= e).sum() for e in epochs], marker="o", label=cat)
    ax.set(xlabel="epoch", ylabel="trials still training", title="trials per rung (ASHA)")
    ax.legend(fontsize=7)
    return fig


def learning_curves(trials: pd.DataFrame, epochs: pd.DataFrame):
    """val_score per epoch of every sweep trial (full budget in green, stopped in blue)."""
    sweep = sweep_rows(trials)
    cats = list(dict.fromkeys(sweep["category"]))
    fig, axes = _grid(len(cats))
    for ax, cat in zip(axes, cats):
        for _, t in sweep[sweep["category"] == cat].iterrows():
            e = epochs[(epochs["trial_id"] == t["trial_id"]) & (epochs["experiment"] == t["experiment"])].sort_values("epoch")
            ax.plot(e["epoch"], e["val_score"], c=STATUS_COLORS.get(t["status"], "grey"), alpha=0.6, lw=1,
                    marker="o", ms=2)
        ax.set(title=cat, xlabel="epoch", ylabel="val_score")
    return fig


def confirmation(table: pd.DataFrame):
    """Each candidate's sweep score (x) and its new seeds' scores (dots) with mean ± std; the pick in bold."""
    cats = list(dict.fromkeys(table["category"]))
    fig, axes = _grid(len(cats))
    for ax, cat in zip(axes, cats):
        rows = table[table["category"] == cat].reset_index(drop=True)
        for i, r in rows.iterrows():
            ax.scatter([i], [r["sweep_val_score"]], marker="x", c="k", label="sweep (selection seed)" if i == 0 else None)
            ax.scatter([i] * len(r["seed_val_scores"]), r["seed_val_scores"], c="tab:blue", s=14,
                       label="new seeds" if i == 0 else None)
            if r["n_seeds"]:
                ax.errorbar([i + 0.15], [r["val_mean"]], yerr=[0 if np.isnan(r["val_std"]) else r["val_std"]],
                            fmt="o", c="tab:red" if r["chosen"] else "tab:grey", capsize=3,
                            label="mean ± std" if i == 0 else None)
        ax.set_xticks(range(len(rows)), [f"{r['trial_id']}\n#{r['rank']}{' *' if r['chosen'] else ''}"
                                         for _, r in rows.iterrows()], fontsize=7)
        ax.set(title=cat, ylabel="val_score")
    axes[0].legend(fontsize=7)
    return fig


def importance(table: pd.DataFrame):
    """fANOVA and PED-ANOVA importances of one category (horizontal bars)."""
    t = table.sort_values("fanova")
    fig, ax = plt.subplots(figsize=(5, 0.8 + 0.3 * len(t)))
    y = np.arange(len(t))
    ax.barh(y - 0.2, t["fanova"], height=0.4, label="fANOVA")
    ax.barh(y + 0.2, t["ped_anova"], height=0.4, label="PED-ANOVA")
    ax.set_yticks(y, [p + (" *" if c else "") for p, c in zip(t["param"], t["conditional"])], fontsize=7)
    ax.set(xlabel="importance (normalised)", title=f"{table['category'].iloc[0]}: what mattered (* conditional)")
    ax.legend(fontsize=7)
    return fig


def parallel(trials: pd.DataFrame, category: str):
    """Parallel coordinates of one category's sampled parameters (scaled to [0, 1]; categorical by choice
    index; absent = below the axis), coloured by final val_score of the full-budget trials."""
    rows = full_budget(sweep_rows(trials[trials["category"] == category]))
    rows = rows[rows["params"].notna()]
    params = [json.loads(p) for p in rows["params"]]
    names = sorted({k for p in params for k in p})
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(names), 3.5))
    if not names:
        return fig
    scaled = np.full((len(params), len(names)), -0.1)
    for j, name in enumerate(names):
        values = [p[name]["value"] for p in params if name in p]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        choices = sorted(set(map(str, values)))
        lo, hi = (min(values), max(values)) if numeric and values else (0, 0)
        for i, p in enumerate(params):
            if name not in p:
                continue
            v = p[name]["value"]
            if numeric:
                scaled[i, j] = 0.5 if hi == lo else (v - lo) / (hi - lo)
            else:
                scaled[i, j] = 0.5 if len(choices) == 1 else choices.index(str(v)) / (len(choices) - 1)
    scores = rows["final_val_score"].to_numpy()
    norm = plt.Normalize(scores.min(), scores.max()) if len(scores) else None
    cmap = plt.get_cmap("viridis")
    for i in np.argsort(scores):
        ax.plot(range(len(names)), scaled[i], c=cmap(norm(scores[i])), alpha=0.8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set(ylim=(-0.15, 1.05), yticks=[], title=f"{category}: parameters of full-budget trials (colour: val_score)")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="val_score")
    return fig


def val_vs_test(trials: pd.DataFrame, honest_table: pd.DataFrame):
    """Final val_score against test image and pixel AUROC per category, Spearman's rho in the title."""
    sweep = full_budget(sweep_rows(trials))
    cats = list(dict.fromkeys(sweep["category"]))
    fig, axes = _grid(len(cats))
    for ax, cat in zip(axes, cats):
        rows = sweep[sweep["category"] == cat]
        h = honest_table[honest_table["category"] == cat].iloc[0]
        ax.scatter(rows["final_val_score"], rows["test_image_auroc"], label=f"image AUROC (rho {h.get('rho_image_auroc', np.nan):+.2f})", s=16)
        ax.scatter(rows["final_val_score"], rows["test_pixel_auroc"], label=f"pixel AUROC (rho {h.get('rho_pixel_auroc', np.nan):+.2f})", s=16, marker="s")
        ax.set(title=cat, xlabel="val_score (final)", ylabel="test metric (reported only)")
        ax.legend(fontsize=7)
    return fig


def comparison(table: pd.DataFrame):
    """Test metrics of the chosen models beside the references (the default config, the peers), per category:
    ``table`` has columns category, method, image_auroc, pixel_auroc, aupro."""
    cats = list(dict.fromkeys(table["category"]))
    fig, axes = _grid(len(cats), width=5.5)
    metrics = ["image_auroc", "pixel_auroc", "aupro"]
    for ax, cat in zip(axes, cats):
        rows = table[table["category"] == cat].reset_index(drop=True)
        width = 0.8 / max(1, len(rows))
        for i, r in rows.iterrows():
            ax.bar(np.arange(3) + i * width, [r[m] for m in metrics], width=width, label=r["method"])
        ax.set_xticks(np.arange(3) + 0.4 - width / 2, metrics)
        ax.set(title=cat, ylim=(0.5, 1.0), ylabel="test (reported only)")
        ax.legend(fontsize=6)
    return fig


def pareto(trials: pd.DataFrame, table: pd.DataFrame | None = None, max_ms: float = 0.0):
    """Per category: each full-budget sweep trial's final val_score against its detector's ms/image at batch 1
    (measured before training), the Pareto front as a step line, the budget as a vertical line, trials that
    did not train the full budget as ticks on the cost axis (infeasible: red), the default config (the sweep's
    baseline) and the pick of ``table`` (``select``'s; its confirmed mean where confirmed) marked."""
    front = pareto_front(trials)
    sweep = sweep_rows(trials)
    cats = list(dict.fromkeys(sweep["category"]))
    fig, axes = _grid(len(cats), width=5.2, height=3.8)
    for ax, cat in zip(axes, cats):
        rows = front[front["category"] == cat]
        ax.scatter(rows["cost_infer_ms_b1"], rows["final_val_score"], s=16, c="tab:grey", label="full-budget trial")
        on = rows[rows["on_front"]]
        ax.step(on["cost_infer_ms_b1"], on["final_val_score"], where="post", c="tab:green", lw=1.2, label="Pareto front")
        ax.scatter(on["cost_infer_ms_b1"], on["final_val_score"], s=22, c="tab:green")
        short = sweep[(sweep["category"] == cat) & ~sweep["trial_id"].isin(set(rows["trial_id"]))]
        low = ax.get_ylim()[0] if len(rows) else 0.0
        for status, color in (("stopped", "tab:blue"), ("infeasible", "tab:red")):
            part = short[short["status"] == status]
            ax.scatter(part["cost_infer_ms_b1"], [low] * len(part), marker="|", s=60, c=color,
                       label=f"{status} ({len(part)})" if len(part) else None)
        base = sweep[(sweep["category"] == cat)]
        base = base[base.apply(is_baseline, axis=1)] if len(base) else base
        if len(base):  # the default's cost: the median of its measurements (each sweep runs it)
            ms = float(base["cost_infer_ms_b1"].median())
            ax.axvline(ms, c="k", ls=":", lw=1, label=f"default: {ms:.0f} ms")
        if table is not None and len(table):
            mine = table[table["category"] == cat]
            for _, r in mine[mine["chosen"] | mine["baseline"]].iterrows():
                y = r["val_mean"] if r["n_seeds"] else r["sweep_val_score"]
                if pd.isna(y):
                    continue
                ax.scatter([r["infer_ms_b1"]], [y], marker="*" if r["chosen"] else "D", s=120 if r["chosen"] else 50,
                           c="tab:orange" if r["chosen"] else "k", zorder=5,
                           label=("pick" if r["chosen"] else "default") + (" (confirmed mean)" if r["n_seeds"] else ""))
        if max_ms:
            ax.axvline(max_ms, c="tab:red", ls="--", lw=1, label=f"budget {max_ms:g} ms")
        ax.set(title=cat, xlabel="ms / image at batch 1 (measured before training)", ylabel="final val_score")
        ax.legend(fontsize=6)
    return fig
