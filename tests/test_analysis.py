"""analysis/: reading experiments, selection with confirmation, importance, honest evaluation, the
notebooks, and the CLI's one-line errors, on sweep results written by the real Parquet writer (no Ray)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from analysis.honest import honest
from analysis.importance import importances, objective, rebuild_study
from analysis.notebook import NotebookError, notebooks, run_notebook
from analysis.selection import candidates, select, write_selection
from ssnf.results import SCHEMA_VERSION, ResultsError, read_results, row_config
from tests.helpers.fake_sweep import write_confirmation, write_sweep

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("store")
    write_sweep(store, "sweep")
    return store


def _trials(store: Path) -> pd.DataFrame:
    return read_results([store / "sweep"]).trials


def test_read_results_accepts_folders_results_folders_and_globs(store, tmp_path):
    write_sweep(tmp_path, "other", categories=("washer",), n=4, seed=3)
    one = read_results([store / "sweep"])
    assert len(one.trials) == 24 and set(one.trials["category"]) == {"washer", "weave"}
    assert len(one.epochs) == one.trials["epochs_run"].sum()
    assert len(read_results([store / "sweep" / "results"]).trials) == 24
    assert len(read_results([store / "sweep" / "results" / "trials"]).trials) == 24
    both = read_results([str(store / "swe*"), str(tmp_path / "oth*")])
    assert len(both.trials) == 28 and set(both.trials["experiment"]) == {"sweep", "other"}
    assert len(read_results([f"file://{store}/sweep"]).trials) == 24  # a URI goes through pyarrow's filesystems
    # a glob of a URI matches one path segment and keeps folders with results (not the trials' folders below)
    (store / "sweep" / "washer" / "trial_1").mkdir(parents=True, exist_ok=True)
    (store / "swept-nothing").mkdir(exist_ok=True)
    assert read_results([f"file://{store}/swe*"]).sources == [f"file://{store}/sweep"]


def test_bad_input_is_one_line(store, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="no sweep results there"):
        read_results([tmp_path / "empty"])
    with pytest.raises(ResultsError, match="no such folder"):
        read_results([tmp_path / "missing"])
    assert len(read_results([store / "sweep", store / "sweep" / "results"]).trials) == 24  # one experiment, once
    shutil.copytree(store / "sweep", tmp_path / "copy")
    with pytest.raises(ResultsError, match="read twice: two of the folders given are copies"):
        read_results([store / "sweep", tmp_path / "copy"])
    # an older schema version beside the current one
    old = tmp_path / "old" / "results" / "trials"
    old.mkdir(parents=True)
    table = pq.read_table(next((store / "sweep" / "results" / "trials").glob("*.parquet")))
    pq.write_table(table.replace_schema_metadata({"ssnf_schema_version": "8"}), old / "x.parquet")
    with pytest.raises(ResultsError, match=f"schema version 8 .*reads version {SCHEMA_VERSION}"):
        read_results([store / "sweep", tmp_path / "old"])
    trials = _trials(store)
    with pytest.raises(ResultsError, match="category bolts is not in the results"):
        candidates(trials, categories=["washer", "bolts"])
    none_full = trials[trials["category"] == "washer"].assign(status="stopped")
    with pytest.raises(ResultsError, match="washer: none of its 12 trials trained the full budget"):
        candidates(none_full)


def test_a_gpu_trial_s_peak_memory_is_a_typed_column_and_null_for_cpu_trials(store, tmp_path):
    from ssnf.config import SSNFConfig
    from ssnf.results import trial_rows, write_trial

    cpu = _trials(store)
    assert str(pq.read_schema(next((store / "sweep" / "results" / "trials").glob("*.parquet"))).field(
        "gpu_peak_bytes").type) == "int64"
    assert cpu["gpu_peak_bytes"].isna().all() and cpu["gpu_reserved_bytes"].isna().all()
    last = {"device": "cuda:0", "gpu_ids": "0", "gpu_peak_bytes": 3.0 * 2**30, "gpu_reserved_bytes": 4 * 2**30}
    history = [{"epoch": 1, "val_score": 0.9, "train_s": 1.0, "val_s": 0.5}]
    row, epochs = trial_rows(experiment="gpu", category="washer", trial_id="g0", status="completed", failure=None,
                             cfg=SSNFConfig(), history=history, last_result=last, started=0.0, ended=10.0, cpus=4.0,
                             gpus=0.25)
    write_trial(str(tmp_path / "gpu" / "results"), row, epochs)
    (gpu,) = read_results([tmp_path / "gpu"]).trials.itertuples()
    assert (gpu.gpu_peak_bytes, gpu.gpu_reserved_bytes) == (3 * 2**30, 4 * 2**30)  # Tune's float, stored as bytes
    assert (gpu.device, gpu.gpu_ids, gpu.gpus) == ("cuda:0", "0", 0.25)


def test_candidates_rank_full_budget_trials_by_validation_never_by_test(store):
    trials = _trials(store)
    # the stopped trial with the best score of all, and a full-budget trial with a perfect test score: neither decides
    trials.loc[trials["trial_id"] == "wa0004", "final_val_score"] = 0.999
    trials.loc[trials["trial_id"] == "wa0006", "test_image_auroc"] = 1.0
    got = candidates(trials, k=3)
    washer = got[got["category"] == "washer"]
    full = trials[(trials["category"] == "washer") & (trials["status"] == "completed")]
    expected = full.sort_values("final_val_score", ascending=False)["trial_id"].head(3).tolist()
    assert washer["trial_id"].tolist() == expected and washer["rank"].tolist() == [1, 2, 3]
    assert "wa0004" not in set(got["trial_id"])


def test_provisional_then_confirmed_and_the_lucky_seed_loses(store, tmp_path):
    sweep = store / "sweep"
    provisional = select(read_results([sweep]), k=3)
    assert not provisional.table["confirmed"].any()
    assert provisional.table.groupby("category")["chosen"].sum().tolist() == [1, 1]
    first, second, third = provisional.candidates[provisional.candidates["category"] == "washer"]["trial_id"]
    assert provisional.table.set_index("trial_id").loc[first, "chosen"]

    # the sweep's best falls to 0.80 on new seeds; the second holds at 0.88: the second wins
    confirm = write_confirmation(tmp_path, sweep, {first: [0.82, 0.78, 0.80], second: [0.87, 0.89, 0.88],
                                                   third: [0.85, 0.86, 0.84]})
    confirmed = select(read_results([sweep, confirm]), k=3)
    t = confirmed.table.set_index("trial_id")
    assert t.loc[second, "chosen"] and not t.loc[first, "chosen"] and t.loc[second, "confirmed"]
    assert t.loc[second, "val_mean"] == pytest.approx(0.88) and t.loc[second, "val_std"] == pytest.approx(0.01)
    assert list(t.loc[second, "seeds"]) == [1, 2, 3] and t.loc[second, "n_seeds"] == 3
    assert "confirmed: best mean val_score 0.8800 ± 0.0100 over 3 new seeds" in t.loc[second, "reason"]
    assert "rank 2 in the sweep" in t.loc[second, "reason"] and "higher on 3 of 3 shared seeds" in t.loc[second, "reason"]
    # weave has no confirmation rows: its pick stays provisional
    assert not confirmed.table[confirmed.table["category"] == "weave"]["confirmed"].any()

    # once confirmed, the candidates are the trials confirmed, whatever k is now: --k 1 cannot hide the result
    again = select(read_results([sweep, confirm]), k=1).table.set_index("trial_id")
    assert {first, second, third} <= set(again.index) and again.loc[second, "chosen"]
    # a second confirmation run with the same seeds is not counted twice (its rows replace the first's)
    repeat = write_confirmation(tmp_path, sweep, {second: [0.87, 0.89, 0.88]}, experiment="confirm-again")
    twice = select(read_results([sweep, confirm, repeat]), k=3).table.set_index("trial_id")
    assert twice.loc[second, "n_seeds"] == 3 and twice.loc[second, "val_std"] == pytest.approx(0.01)


def test_selection_files_and_the_yaml_loads_back_as_the_row_config(store, tmp_path):
    from ssnf.config import SSNFConfig, from_dict, to_dict
    from ssnf.configfile import load_config

    selection = select(read_results([store / "sweep"]), k=2)
    written = write_selection(selection, tmp_path / "best")
    assert {p.name for p in written} == {"washer.yaml", "weave.yaml", "selection.parquet", "candidates.parquet"}
    table = pd.read_parquet(tmp_path / "best" / "selection.parquet")
    assert len(table) == 4 and table["chosen"].sum() == 2
    assert {"val_mean", "val_std", "seed_val_scores", "sweep_test_image_auroc", "reason", "config.train.lr"} <= set(table.columns)
    for _, row in selection.chosen.iterrows():
        loaded = to_dict(load_config(str(tmp_path / "best" / f"{row['category']}.yaml"), []))
        expected = to_dict(from_dict(SSNFConfig, row_config(row)))
        expected["train"].update(threads=0, device="auto")  # where the trial ran is not part of the choice
        assert loaded == expected
    assert len(pd.read_parquet(tmp_path / "best" / "candidates.parquet")) == 4


def test_importance_includes_conditional_parameters(store):
    trials = _trials(store)
    washer = trials[trials["category"] == "washer"]
    study, presence = rebuild_study(washer, at="final")
    assert len(study.trials) == 5  # the full-budget trials
    conditional = {p for p, n in presence.items() if n < len(study.trials)}
    assert conditional, "the smoke space's second block and blend exist only in some trials"
    assert all(set(t.params) == set(presence) for t in study.trials), "every trial carries every parameter"
    table = importances(washer, at="final")
    assert set(table["param"]) == set(presence)
    assert table.loc[table["conditional"], "param"].tolist() and table["fanova"].sum() == pytest.approx(1.0)
    assert table.iloc[0]["param"] == "train.lr", "the objective depends on the learning rate only"
    # at an epoch every trial that reached it counts, stopped ones included
    epochs = read_results([store / "sweep"]).category("washer").epochs
    assert len(rebuild_study(washer, epochs, at=1)[0].trials) == 11
    assert objective(washer, epochs, min_trials=8) == 1 and objective(washer, epochs, min_trials=5) == "final"
    with pytest.raises(ResultsError, match="importance needs 6"):
        importances(washer, at="final", min_trials=6)
    # two spaces whose parameters share a name but not a distribution: one line, not Optuna's ValueError
    mixed = washer.copy()
    row = mixed.index[mixed["status"] == "completed"][0]
    params = json.loads(mixed.loc[row, "params"])
    params["loss.weight"] = {"value": 0.37, "distribution": json.dumps(
        {"name": "FloatDistribution", "attributes": {"low": 0.05, "high": 1.0, "log": True, "step": None}})}
    mixed.loc[row, "params"] = json.dumps(params)
    with pytest.raises(ResultsError, match="parameter loss.weight has two distributions"):
        rebuild_study(mixed, at="final")


def test_honest_spearman_and_the_gap(store, tmp_path):
    from scipy.stats import spearmanr

    trials = _trials(store)
    table = honest(trials).set_index("category")
    full = trials[(trials["category"] == "washer") & (trials["status"] == "completed")]
    rho, _ = spearmanr(full["final_val_score"], full["test_image_auroc"])
    assert table.loc["washer", "rho_image_auroc"] == pytest.approx(rho)
    chosen = full.loc[full["final_val_score"].idxmax()]
    assert table.loc["washer", "selected_image_auroc"] == pytest.approx(chosen["test_image_auroc"])
    assert table.loc["washer", "gap_image_auroc"] == pytest.approx(full["test_image_auroc"].max() - chosen["test_image_auroc"])
    # with confirmation runs: the correlation over every full-budget run as well
    confirm = write_confirmation(tmp_path, store / "sweep", {"wa0000": [0.9, 0.91]})
    both = pd.concat([trials, read_results([str(confirm)]).trials], ignore_index=True)
    table = honest(both).set_index("category")
    every = both[(both["category"] == "washer") & (both["status"] == "completed") & both["test_image_auroc"].notna()]
    assert table.loc["washer", "runs_all"] == len(every) > len(full)
    assert table.loc["washer", "rho_all_image_auroc"] == pytest.approx(
        spearmanr(every["final_val_score"], every["test_image_auroc"])[0])


def test_overview_counts_statuses_and_sums_time_over_sweep_trials_only():
    from analysis.overview import status_counts, time_spent

    trials = pd.DataFrame({
        "category": ["a", "a", "a", "b", "a"], "status": ["completed", "stopped", "completed", "error", "completed"],
        "confirms": [None, None, None, None, "a0"],  # the last row is a confirmation run: not a sweep trial
        "epochs_run": [4, 1, 4, 0, 4], "wall_s": [10.0, 2.0, 12.04, 1.0, 50.0], "train_s": [8.0, 1.5, 9.0, 0.0, 40.0],
        "setup_s": [1.0, 0.25, 1.0, 1.0, 5.0], "test_s": [0.5, 0.0, 0.5, 0.0, 1.0],
        "ray_overhead_s": [0.5, 0.25, 1.54, 0.0, 4.0]})
    counts = status_counts(trials)
    assert counts.loc["a"].to_dict() == {"completed": 2, "error": 0, "stopped": 1}
    assert counts.loc["b"].to_dict() == {"completed": 0, "error": 1, "stopped": 0}
    spent = time_spent(trials)
    assert spent.loc["a", "wall_s"] == pytest.approx(24.0) and spent.loc["a", "train_s"] == pytest.approx(18.5)
    assert spent.loc["a", "ray_overhead_s"] == pytest.approx(2.3)  # 2.29, to 0.1 s
    assert spent.loc["a"][["trials", "epochs_mean", "epochs_max"]].tolist() == [3, 3.0, 4]
    assert spent.loc["b"][["trials", "epochs_max"]].tolist() == [1, 0]


def test_optimism_is_the_sweep_score_above_the_seeds_mean():
    from analysis.selection import optimism

    table = pd.DataFrame({"category": ["a", "a", "b"], "rank": [1, 2, 1], "trial_id": ["a1", "a2", "b1"],
                          "sweep_val_score": [0.95, 0.90, 0.80], "val_mean": [0.85, 0.89, float("nan")],
                          "val_std": [0.01, 0.02, float("nan")], "chosen": [False, True, True], "reason": ["", "", ""]})
    got = optimism(table)
    assert list(got.columns) == ["category", "rank", "trial_id", "sweep_val_score", "val_mean", "val_std", "optimism",
                                 "chosen"]
    assert got["optimism"].iloc[:2].tolist() == pytest.approx([0.10, 0.01]) and got["optimism"].isna().iloc[2]


def test_importance_by_category_says_why_a_category_has_no_table(store):
    from analysis.importance import by_category
    from ssnf.results import Results

    results = read_results([store / "sweep"])
    found = by_category(results)
    assert [f.category for f in found] == list(dict.fromkeys(results.trials["category"]))
    for f in found:
        part = results.category(f.category)
        assert f.at == objective(part.trials, part.epochs) and f.table is not None and not f.note
    washer = by_category(results, ["washer"], at="final")[0]
    assert washer.objective == "final val_score of full-budget trials" and washer.table.iloc[0]["param"] == "train.lr"
    assert by_category(results, ["washer"], at="1")[0].objective == "val_score at epoch 1"
    # two full-budget trials of washer left: washer has no table and says why; weave still has one
    t = results.trials
    drop = t[(t["category"] == "washer") & (t["status"] == "completed")].index[2:]
    fewer = by_category(Results(t.drop(drop), results.epochs, results.sources), at="final")
    by_name = {f.category: f for f in fewer}
    assert by_name["washer"].table is None and "importance needs 4" in by_name["washer"].note
    assert by_name["weave"].table is not None
    with pytest.raises(ResultsError, match="category bolts is not in the results"):
        by_category(results, ["washer", "bolts"])


def _outputs(written: Path) -> list[dict]:
    import nbformat

    return [o for c in nbformat.read(written, as_version=4).cells if c.cell_type == "code" for o in c.outputs]


def test_every_notebook_runs_on_a_sweep_and_writes_its_plots(store, tmp_path):
    """Every notebook, executed as a user's CI would (nbclient, a fresh kernel each), on a sweep and its
    confirmation: each writes its PNGs and embeds its figures in the executed notebook."""
    import nbformat

    confirm = write_confirmation(tmp_path, store / "sweep", {"wa0000": [0.9, 0.91]})
    params = {"RESULTS": [str(store / "sweep"), str(confirm)], "OUT": str(tmp_path / "out"),
              "REFERENCES": str(REPO / "analysis" / "references.csv")}
    names = [p.stem for p in notebooks()]
    assert names == ["01_overview", "02_selection", "03_what_mattered", "04_honest", "05_comparison", "06_cost"]
    for path in notebooks():
        run = run_notebook(path, params, tmp_path / "out")
        assert run.written.is_file() and run.cells >= 2
        outputs = _outputs(run.written)
        assert not [o for o in outputs if o.output_type == "error"]
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.stem}: no figure in the notebook"
        cells = nbformat.read(run.written, as_version=4).cells
        tags = [c.metadata.get("tags", []) for c in cells]
        injected = tags.index(["injected-parameters"])
        assert "parameters" in tags[injected - 1] and repr(params["RESULTS"]) in cells[injected].source
    pngs = {p.stem for p in (tmp_path / "out").glob("*.png")}
    assert {"overview_statuses", "overview_history", "overview_rungs", "selection_confirmation", "importance_washer",
            "parallel_washer", "learning_curves", "honest_val_vs_test", "comparison", "cost_pareto"} <= pngs
    assert (tmp_path / "out" / "best" / "washer.yaml").is_file()


def test_a_notebook_runs_in_a_kernel_of_this_interpreter_and_keeps_every_output(tmp_path, monkeypatch):
    """The kernel is ipykernel in this interpreter, whatever kernelspecs exist (here a broken ``python3`` one
    first on JUPYTER_PATH, and none installed by hand), in the caller's folder and environment; parameters go
    in after the ``parameters`` cell; stdout, stderr, warnings and the figure stay in the executed notebook."""
    shadow = tmp_path / "jupyter" / "kernels" / "python3"
    shadow.mkdir(parents=True)
    (shadow / "kernel.json").write_text(json.dumps({"argv": ["/nowhere/python", "-m", "ipykernel_launcher", "-f",
                                                             "{connection_file}"], "display_name": "broken",
                                                    "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("SSNF_PROBE", "passed through")
    monkeypatch.chdir(tmp_path)
    probe = tmp_path / "01_probe.py"
    probe.write_text(
        '# %% tags=["parameters"]\nX = 1\nOUT = "nowhere"\n\n'
        "# %%\nimport os, sys, warnings\nimport matplotlib.pyplot as plt\nfrom analysis import plots\n"
        "print(sys.executable, X, os.getcwd(), os.environ['SSNF_PROBE'])\n"
        "print('to stderr', file=sys.stderr)\nwarnings.warn('careful')\n"
        "fig, ax = plt.subplots()\nax.plot([0, 1])\nprint(plots.save(fig, OUT, 'probe'))\n")
    run = run_notebook(probe, {"X": 5, "OUT": "figs"}, "out")
    assert run.cells == 2 and run.written == Path("out") / "01_probe.ipynb"
    assert run.outputs[1].split("\n")[0] == f"{sys.executable} 5 {tmp_path} passed through"
    outputs = _outputs(tmp_path / "out" / "01_probe.ipynb")
    stderr = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stderr")
    assert "to stderr" in stderr and "UserWarning: careful" in stderr
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 1
    assert (tmp_path / "figs" / "probe.png").is_file(), "the figure is also a PNG, where OUT says"


def test_a_failing_cell_names_the_notebook_and_the_cell(tmp_path):
    bad = tmp_path / "01_bad.py"
    bad.write_text("# %%\nx = 1\n\n# %%\nraise ValueError('boom')\n")
    with pytest.raises(NotebookError, match=r"01_bad.py: cell 2 failed: ValueError: boom"):
        run_notebook(bad, {}, tmp_path / "out")
    assert (tmp_path / "out" / "01_bad.ipynb").is_file()
    assert [o for o in _outputs(tmp_path / "out" / "01_bad.ipynb") if o.output_type == "error"][0].ename == "ValueError"
    slow = tmp_path / "02_slow.py"
    slow.write_text("# %% [markdown]\n# slow\n\n# %%\nimport time\ntime.sleep(60)\n")
    with pytest.raises(NotebookError, match=r"02_slow.py: cell 2 ran longer than the timeout \(1 s per cell\)"):
        run_notebook(slow, {}, tmp_path / "out", timeout=1)


def test_cli_needs_neither_ray_nor_torch_and_fails_in_one_line(store, tmp_path):
    probe = ("import sys; results, out = sys.argv[1:3]\n"
             "import analysis, analysis.compare, analysis.honest, analysis.importance, analysis.notebook\n"
             "import analysis.overview, analysis.plots\n"
             "from analysis.__main__ import main\n"
             "code = main(['select', results, '--out', out]) or main(['importance', results]) or main(['honest', results])\n"
             "bad = [m for m in ('ray', 'torch', 'timm') if m in sys.modules]; assert not bad, bad; sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", probe, str(store / "sweep"), str(tmp_path / "best")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "**chosen**" in done.stdout and "provisional picks" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "analysis", "select", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert bad.stderr.startswith("analysis: error: ") and "no such folder" in bad.stderr
    assert not (tmp_path / "x").exists()


def test_references_parse_and_sit_beside_the_chosen_model(store):
    from analysis.compare import COLUMNS, comparison, load_references

    refs = load_references()
    assert list(refs.columns) == list(COLUMNS) and not refs.isna().any().any()
    assert all((refs[m] > 0).all() and (refs[m] <= 1).all() for m in ("image_auroc", "pixel_auroc", "aupro"))
    table = select(read_results([store / "sweep"]), k=1).table
    renamed = refs.assign(category=refs["category"].replace({"tire": "washer"}))
    got = comparison(table, renamed)
    washer = got[got["category"] == "washer"]
    assert washer["method"].iloc[0] == "ssnf chosen (provisional)" and len(washer) == 1 + (refs["category"] == "tire").sum()


def test_the_default_config_is_a_candidate_and_the_pick_is_measured_against_it(tmp_path):
    """A sweep of a space with a baseline: its trial 0 (ssnf's default config) joins the candidates even when
    ASHA stopped it, is confirmed with the others, and the winner's reason says how far it beat the default."""
    from analysis.selection import is_baseline, select, write_selection
    from tests.helpers.fake_sweep import write_confirmation, write_sweep

    sweep = write_sweep(tmp_path, categories=("washer",), n=9, space_name="paper", stopped=(0,))
    results = read_results([str(sweep)])
    assert results.trials.apply(is_baseline, axis=1).sum() == 1
    first = select(results, k=2)
    t = first.table
    base = t[t["baseline"]]
    assert len(t) == 3 and len(base) == 1 and base["rank"].iloc[0] == 0 and not base["chosen"].any()
    assert "default config" in base["reason"].iloc[0]
    write_selection(first, tmp_path / "best")
    cands = pd.read_parquet(tmp_path / "best" / "candidates.parquet")
    assert base["trial_id"].iloc[0] in set(cands["trial_id"]), "the default is confirmed with the others"
    top = t[t["rank"] == 1]["trial_id"].iloc[0]
    confirm = write_confirmation(tmp_path, sweep, {top: [0.91, 0.93], base["trial_id"].iloc[0]: [0.90, 0.86]})
    second = select(read_results([str(sweep), str(confirm)]), k=2)
    won = second.table[second.table["chosen"]].iloc[0]
    assert won["trial_id"] == top
    assert f"the default config (trial {base['trial_id'].iloc[0]})" in won["reason"]
    assert "+0.0400" in won["reason"] and "higher on 2 of 2 shared seeds" in won["reason"]


def test_select_within_a_budget_confirms_the_default_over_it_and_never_picks_it(tmp_path):
    """``select --max-ms``: only trials whose measured ms/image is within the budget are ranked and can win;
    the default (over the budget) stays a candidate, is confirmed, and the pick's reason measures against it.
    The selection carries every candidate's cost."""
    from analysis.selection import select, write_selection

    sweep = write_sweep(tmp_path, categories=("washer",), n=9, space_name="paper", stopped=(0,))
    trials = read_results([str(sweep)]).trials
    full = trials[(trials["status"] == "completed") & trials["final_val_score"].notna()]
    default_ms = float(trials[trials["trial_id"] == "wa0000"]["cost_infer_ms_b1"].iloc[0])  # trial 0: the baseline
    limit = default_ms - 1.0
    assert (full["cost_infer_ms_b1"] <= limit).any() and (full["cost_infer_ms_b1"] > limit).any()
    first = select(read_results([str(sweep)]), k=2, budget={"max_ms": limit})
    t = first.table
    assert {"infer_ms_b1", "infer_ms_b32", "gflops", "params", "eligible"} <= set(t.columns)
    ranked_rows = t[t["rank"] >= 1]
    assert len(ranked_rows) and (ranked_rows["infer_ms_b1"] <= limit).all(), "only trials within the budget are ranked"
    base = t[t["baseline"]].iloc[0]
    assert base["infer_ms_b1"] > limit and not base["eligible"] and not base["chosen"]
    assert "cannot be chosen" in base["reason"]
    best_inside = full[full["cost_infer_ms_b1"] <= limit].sort_values("final_val_score").iloc[-1]["trial_id"]
    assert t[t["chosen"]]["trial_id"].iloc[0] == best_inside
    write_selection(first, tmp_path / "best")
    picked = pd.read_parquet(tmp_path / "best" / "selection.parquet")
    assert picked["infer_ms_b1"].notna().all()
    # confirmed: the default scores higher on its seeds, but it is over the budget: the cheap trial wins
    confirm = write_confirmation(tmp_path, sweep, {best_inside: [0.90, 0.91], base["trial_id"]: [0.95, 0.96]})
    second = select(read_results([str(sweep), str(confirm)]), k=2, budget={"max_ms": limit})
    won = second.table[second.table["chosen"]].iloc[0]
    assert won["trial_id"] == best_inside and "the default config" in won["reason"] and "-0.0500" in won["reason"]
    with pytest.raises(ResultsError, match=r"none of its \d+ full-budget trials is within --max-ms 0.001 \(the cheapest"):
        select(read_results([str(sweep)]), budget={"max_ms": 0.001})


def test_pareto_front_keeps_the_trials_no_other_beats_on_score_and_cost(store, tmp_path):
    from analysis import plots
    from analysis.selection import pareto_front

    front = pareto_front(_trials(store))
    for _, group in front.groupby("category"):
        for _, r in group.iterrows():
            dominated = ((group["cost_infer_ms_b1"] <= r["cost_infer_ms_b1"]) & (group["final_val_score"] > r["final_val_score"])).any()
            assert r["on_front"] == (not dominated)
    assert front["on_front"].any() and not front["on_front"].all()
    assert plots.save(plots.pareto(_trials(store), max_ms=10.0), tmp_path, "pareto").is_file()


def test_two_sweeps_of_a_category_give_one_default_candidate(tmp_path):
    """Each sweep of a space with a baseline runs the default: selecting over both keeps one of them (the
    confirmed one where one was confirmed), not a second, unconfirmable default."""
    from analysis.selection import select

    first = write_sweep(tmp_path, "one", categories=("washer",), n=6, space_name="paper", stopped=(0,))
    second = write_sweep(tmp_path, "two", categories=("washer",), n=6, space_name="paper", seed=1, stopped=(0,))
    table = select(read_results([str(first), str(second)]), k=1).table
    assert table["baseline"].sum() == 1
    confirm = write_confirmation(tmp_path, second, {"wa0000": [0.8, 0.81]})
    table = select(read_results([str(first), str(second), str(confirm)]), k=1).table
    base = table[table["baseline"]]
    assert len(base) == 1 and base["experiment"].iloc[0] == "two" and base["n_seeds"].iloc[0] == 2
