"""The live view the docs promise (docs/analysis.md, "The Optuna study, live"): ``optuna-dashboard`` on a sweep's
study journal, ``<experiment>/optuna/<category>.journal``, written the way the sweep writes it (ssnf/tune/journal.py's
``local_journal`` and ``storage``, the study named after the category, a trial reported per epoch, ASHA's stops
told PRUNED). The server is the docs' command on 127.0.0.1, read back through its HTTP API; no Ray."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

DASHBOARD = Path(sys.executable).parent / "optuna-dashboard"  # the console script of this venv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, server: subprocess.Popen, log: Path, until, seconds: float = 30.0):
    """GET ``url`` as JSON until ``until(answer)`` holds (the server starting, the journal read again)."""
    deadline, answer = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        assert server.poll() is None, f"optuna-dashboard exited {server.returncode}: {log.read_text()[-2000:]}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                answer = json.loads(response.read())
            if until(answer):
                return answer
        except (urllib.error.URLError, ConnectionError):
            pass  # not listening yet
        time.sleep(0.3)
    raise AssertionError(f"{url}: no answer as expected in {seconds:.0f} s (last: {answer}); "
                         f"log: {log.read_text()[-2000:]}")


def _trial(study, scores: list[float], state=None):
    """One trial as the sweep leaves it (Ray's OptunaSearch): parameters sampled from the space, val_score
    reported per epoch, then told (or still running)."""
    import optuna

    trial = study.ask({"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
                       "model.blocks": optuna.distributions.IntDistribution(2, 8)})
    for epoch, score in enumerate(scores, start=1):
        trial.report(score, epoch)
    if state is not None:
        study.tell(trial, scores[-1] if state == optuna.trial.TrialState.COMPLETE else None, state=state)
    return trial


@pytest.mark.skipif(not DASHBOARD.is_file(), reason="optuna-dashboard is not installed (pip install -e '.[dashboard]')")
def test_optuna_dashboard_shows_the_sweeps_journal_live(tmp_path):
    import optuna

    from ssnf.tune.journal import local_journal, storage

    experiment = str(tmp_path / "ray_results" / "tire")
    journal = local_journal(experiment, "tire")
    assert journal == Path(experiment) / "optuna" / "tire.journal"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="tire", storage=storage(journal), direction="maximize", load_if_exists=True)
    done, pruned = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED
    for scores, state in (([0.70, 0.81], done), ([0.75, 0.87], done), ([0.60], pruned), ([0.72, 0.84], done),
                          ([0.55], None)):  # the last one still training
        _trial(study, scores, state)

    port, log = _free_port(), tmp_path / "dashboard.log"
    with log.open("w") as out:
        # the docs' command: the journal's path as the storage
        server = subprocess.Popen([str(DASHBOARD), str(journal), "--host", "127.0.0.1", "--port", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}/api/studies"
        studies = _get(base, server, log, lambda a: bool(a["study_summaries"]))["study_summaries"]
        assert [(s["study_name"], s["directions"]) for s in studies] == [("tire", ["maximize"])]
        detail = _get(f"{base}/{studies[0]['study_id']}", server, log, lambda a: True)
        trials = sorted(detail["trials"], key=lambda t: t["number"])
        assert [t["state"] for t in trials] == ["Complete", "Complete", "Pruned", "Complete", "Running"]
        assert [t.get("values") for t in trials if t["state"] == "Complete"] == [[0.81], [0.87], [0.84]]
        assert [v["value"] for v in trials[2]["intermediate_values"]] == [0.60]
        assert all({p["name"] for p in t["params"]} == {"train.lr", "model.blocks"} for t in trials)
        assert detail["best_trials"][0]["number"] == 1
        # live: the running trial ends and a new one is told while the dashboard is up; it reads the journal again
        study.tell(trials[4]["number"], 0.9)
        _trial(study, [0.66], pruned)
        detail = _get(f"{base}/{studies[0]['study_id']}", server, log, lambda a: len(a["trials"]) == 6, seconds=15)
        assert [t["number"] for t in detail["best_trials"]] == [4]
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
