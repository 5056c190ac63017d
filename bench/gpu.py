"""The GPU path in one prepared run (issue 31): CUDA tests, training, a fractional-GPU sweep, predict; one JSON.

    python bench/gpu.py OUT_DIR [--data-root DIR] [--carry .gpu_carry] [--budget-s 480]
    python bench/gpu.py OUT_DIR --cpu-dry-run    # every stage at tiny sizes on the CPU: the script proven first

Stages, in order, each in a process of its own (``bench/gpu_stages.py``, ``gpu_sweep.py``, ``gpu_predict.py``):

1. ``env``: the card (``torch.cuda.get_device_name``), torch / CUDA / cuDNN, the packages, ONNX Runtime's providers;
2. ``tests``: ``pytest tests/test_cuda.py``, counted;
3. ``train_fp32``, ``train_bf16``: the default detector (the library defaults, as ``ssnf train`` uses them) on tire,
   2 epochs: s/epoch (training, validation), peak GPU memory, validation figures; their difference;
4. ``sweep_fractional``, ``sweep_whole``: ``tune_main.py`` on local Ray, the same 8 trials (``smoke`` space, random
   search, seed 0, no scheduler) with ``--gpus-per-trial 0.25 --max-concurrent 4`` and with ``--gpus-per-trial 1``:
   trials/hour, ``gpu_ids`` / ``device`` and peak GPU memory per trial from the Parquet results;
5. ``predict``: ms/image at batch 1 and 32, eager bf16, eager fp32, TorchScript, ONNX Runtime's CUDA provider (or
   why not), and ``ssnf predict`` end to end.

Each stage gets a share of what is left of ``--budget-s`` (weights ``WEIGHTS``: time a fast stage leaves goes to the
later ones), is stopped at it, and its error (one line) is recorded; the next stage runs regardless. ``OUT_DIR`` gets
``gpu.json`` (rewritten after every stage: a run cut short keeps what it measured) and ``gpu.log`` (every stage's
output); scratch (data, checkpoints, sweeps, caches) goes to a temporary folder. Data: tire from ``--data-root``,
else from the carry (``bench/gpu_carry.py``), else generated demo data at 256 px (``ssnf data demo``); the backbone's
weights from the carry when it has them. Exit status: 0 every stage ran; 1 a stage failed or was stopped (the JSON
names it); 2 bad arguments. Without a CUDA device (and without ``--cpu-dry-run``): one line, ``no CUDA device
found``, the JSON says so, exit 0.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
FORMAT = "ssnf-gpu-bench/1"
# share of the time left that each stage may take (of the stages not yet run): a fast stage leaves time to later ones
WEIGHTS = {"tests": 1.3, "train_fp32": 1.3, "train_bf16": 1.3, "sweep_fractional": 1.6, "sweep_whole": 2.4,
           "predict": 1.3}
ENV_LIMIT_S, MIN_STAGE_S, RESERVE_S = 90.0, 20.0, 5.0
TARGETS = {"epoch_s": 4.7, "bf16_val_score": 0.005, "fractional_speedup": 2.0, "b32_ms": 2.0, "b1_ms": 10.0}
# sizes per mode; a dry run: demo data at 64 px, 2 trials per sweep on the CPU (gpus 0; one at a time for "whole")
MODES = {
    "gpu": {"device": "cuda", "epochs": 2, "sets": [], "repeats": 5, "b1_images": 32, "env": {},
            "sweep": {"trials": 8, "epochs": 2, "cpus": 3, "seed": 0,
                      "fractional": {"gpus": 0.25, "concurrent": 4}, "whole": {"gpus": 1.0, "concurrent": 4}}},
    # one torch thread a process: on a shared 2-core machine two threads spin on each other (5 ms an operator)
    "cpu-dry-run": {"device": "cpu", "epochs": 2, "repeats": 2, "b1_images": 8, "env": {"OMP_NUM_THREADS": "1"},
                    "sets": ["data.image_size=64", "data.val_fraction=0.25", "train.batch_size=4"],
                    "sweep": {"trials": 2, "epochs": 1, "cpus": 1, "seed": 0,
                              "fractional": {"gpus": 0.0, "concurrent": 2}, "whole": {"gpus": 0.0, "concurrent": 1}}},
}


class Run:
    """The run's output folder, log, scratch folder, budget clock and the JSON so far."""

    def __init__(self, out: Path, budget_s: float, mode: str) -> None:
        self.out, self.budget_s, self.mode = out, budget_s, mode
        self.start = time.monotonic()
        self.log_path = out / "gpu.log"
        self.log_path.write_text("")
        self.work = Path(tempfile.mkdtemp(prefix="ssnf-gpu-"))
        # offline machine: no hub probe for weights, no Ray usage report
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
                    "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(
                        os.pathsep))])}
        self.doc: dict = {"format": FORMAT, "mode": mode, "budget_s": budget_s,
                          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stages": {}}

    def say(self, line: str, console: bool = True) -> None:
        """``line`` into the log, and (``console``) on stdout."""
        if console:
            print(line, flush=True)
        with open(self.log_path, "a") as log:
            log.write(f"[gpu.py {self.elapsed():6.1f} s] {line}\n")

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed() - RESERVE_S

    def save(self) -> None:
        self.doc["wall_s"] = round(self.elapsed(), 2)
        tmp = self.out / ".gpu.json.part"
        tmp.write_text(json.dumps(self.doc, indent=1, default=str) + "\n")
        tmp.replace(self.out / "gpu.json")


def run_stage(run: Run, name: str, spec: dict, limit: float) -> dict:
    """``spec``'s stage in its own process group, stopped at ``limit`` seconds: its figures, or why it has none."""
    spec_path, result_path = run.work / f"{name}.spec.json", run.work / f"{name}.result.json"
    spec_path.write_text(json.dumps({**spec, "work": str(run.work), "limit_s": limit}))
    run.say(f"{name}: started (at most {limit:.0f} s)", console=False)
    offset = run.log_path.stat().st_size
    t = time.perf_counter()
    with open(run.log_path, "a") as log:
        proc = subprocess.Popen([sys.executable, str(HERE / "gpu_stages.py"), str(spec_path), str(result_path)],
                                cwd=REPO, env=run.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        stopped = False
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            stopped = True
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
                os.killpg(proc.pid, sig)
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
    seconds = round(time.perf_counter() - t, 2)
    if proc.returncode == 0 and result_path.is_file():
        return {**json.loads(result_path.read_text()), "status": "ok", "seconds": seconds}
    if stopped:
        return {"status": "stopped", "seconds": seconds, "error": f"stopped at its {limit:.0f} s share of the budget"}
    return {"status": "failed", "seconds": seconds, "error": last_error(run.log_path, offset, proc.returncode)}


def last_error(log: Path, offset: int, code: int | None) -> str:
    """The last line a failed stage wrote (a traceback's ends with the exception), and its exit status."""
    with open(log, "rb") as f:
        f.seek(offset)
        lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    return f"{lines[-1][:400] if lines else 'no output'} (exit {code})"


def stage_limit(run: Run, name: str) -> float:
    """``name``'s share of the time left: its weight over those of the stages still to run."""
    later = list(WEIGHTS)[list(WEIGHTS).index(name):]
    return min(600.0, run.left() * WEIGHTS[name] / sum(WEIGHTS[s] for s in later))


def prepare(run: Run, args: argparse.Namespace) -> dict:
    """The data the stages read, and the carried weights unpacked into a cache of the run's own."""
    carry = Path(args.carry)
    weights = sorted((carry / "weights").glob("*.xz"))
    if weights:
        cache = run.work / "cache" / "weights"
        cache.mkdir(parents=True)
        for packed in weights:
            with lzma.open(packed) as src, open(cache / packed.stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
        run.env["SSNF_CACHE_DIR"] = str(cache.parent)
    if run.mode == "cpu-dry-run":
        return {**demo(run, 64, 12), "weights": [p.stem for p in weights]}
    if args.data_root and (Path(args.data_root) / "tire").is_dir():
        return {"root": str(Path(args.data_root).resolve()), "category": "tire", "source": "--data-root",
                "weights": [p.stem for p in weights]}
    if (carry / "data" / "tire").is_dir():
        return {"root": str((carry / "data").resolve()), "category": "tire",
                "source": f"{carry}/data (bench/gpu_carry.py: 256 px, lossless)", "weights": [p.stem for p in weights]}
    return {**demo(run, 256, 60), "weights": [p.stem for p in weights]}


def demo(run: Run, size: int, n_train: int) -> dict:
    from ssnf.data.demo import DemoSpec, ensure_demo

    root = run.work / "demo"
    ensure_demo(root, ("weave",), DemoSpec(size=size, n_train=n_train, n_test_good=3, n_per_defect=2, seed=0))
    return {"root": str(root), "category": "weave", "source": f"generated demo data, weave at {size} px"}


def stages(run: Run, mode: dict, data: dict) -> list[tuple[str, dict]]:
    """(stage name, its spec), in order."""
    base = {"device": mode["device"], "data_root": data["root"], "category": data["category"], "sets": mode["sets"]}
    train = [(f"train_{p}", {**base, "stage": "train", "precision": p, "epochs": mode["epochs"],
                             "out": str(run.work / f"train-{p}")}) for p in ("fp32", "bf16")]
    sweep = mode["sweep"]
    sweeps = [(f"sweep_{kind}", {**base, "stage": "sweep", "name": f"gpu-{kind}", "trials": sweep["trials"],
                                 "epochs": sweep["epochs"], "cpus": sweep["cpus"], "seed": sweep["seed"], **sweep[kind]})
              for kind in ("fractional", "whole")]
    predict = ("predict", {**base, "stage": "predict", "repeats": mode["repeats"], "b1_images": mode["b1_images"],
                           "checkpoint": str(run.work / "train-bf16" / "checkpoint.pt")})
    return [("tests", {**base, "stage": "tests"}), *train, *sweeps, predict]


def _get(doc: dict, *keys):
    """``doc[k1][k2]...``, None where a stage (or figure) is missing."""
    for key in keys:
        if not isinstance(doc, dict) or doc.get(key) is None:
            return None
        doc = doc[key]
    return doc


def _target(value, bound: float, kind: str) -> dict:
    met = None if value is None else (value <= bound if kind == "max" else value >= bound if kind == "min"
                                      else abs(value) <= bound)
    spelled = {"max": f"<= {bound:g}", "min": f">= {bound:g}", "abs": f"within +-{bound:g}"}[kind]
    return {"value": value, "target": spelled, "met": met}


def targets(stages: dict, dry: bool) -> dict:
    """The issue's targets against what was measured (``met`` None: not measured)."""
    fp32, bf16 = _get(stages, "train_fp32", "val_score"), _get(stages, "train_bf16", "val_score")
    default = _get(stages, "predict", "default_backend") or "eager_fp32"
    whole = _get(stages, "sweep_whole", "trials_per_hour")
    fractional = _get(stages, "sweep_fractional", "trials_per_hour")
    out = {
        "epoch_s (default = bf16, epoch 2: training + validation)": _target(
            _get(stages, "train_bf16", "epoch_s"), TARGETS["epoch_s"], "max"),
        "bf16 - fp32 val_score": _target(None if fp32 is None or bf16 is None else bf16 - fp32,
                                         TARGETS["bf16_val_score"], "abs"),
        "fractional / whole trials per hour": _target(fractional / whole if fractional and whole else None,
                                                      TARGETS["fractional_speedup"], "min"),
    }
    for batch in (32, 1):
        key = f"b{batch}_ms"
        out[f"ms/image batch {batch} (ssnf predict's default: {default})"] = _target(
            _get(stages, "predict", "backends", default, key), TARGETS[key], "max")
        name, value = fastest(stages, key)
        out[f"ms/image batch {batch}, the fastest backend"] = {**_target(value, TARGETS[key], "max"), "backend": name}
    if dry:
        out["note"] = "a CPU dry run: tiny sizes on the CPU, not the GPU's figures; the targets are the GPU's"
    return out


def fastest(stages: dict, key: str) -> tuple[str | None, float | None]:
    """The predict stage's fastest backend at ``key`` (``b1_ms``, ``b32_ms``): its name and time."""
    timed = {name: r[key] for name, r in (_get(stages, "predict", "backends") or {}).items() if key in r}
    if not timed:
        return None, None
    name = min(timed, key=timed.get)
    return name, timed[name]


def same_trials(stages: dict) -> bool | None:
    """Whether both sweeps drew the same configurations (their sampled parameters, in order of start)."""
    drawn = [[json.dumps(t["params"], sort_keys=True) for t in _get(stages, s, "trials") or []]
             for s in ("sweep_fractional", "sweep_whole")]
    if not drawn[0] or not drawn[1]:
        return None
    n = min(len(drawn[0]), len(drawn[1]))
    return sorted(drawn[0][:n]) == sorted(drawn[1][:n])


def summary(stage: str, result: dict) -> str:
    """One line per stage for the console (the JSON holds everything)."""
    if result["status"] != "ok":
        return f"{stage}: {result['status']} after {result['seconds']} s: {result.get('error', '')}"
    figures = {
        "env": lambda r: f"{r.get('device', 'no CUDA device')}, torch {r['torch']}, CUDA {r['cuda_runtime']}",
        "tests": lambda r: f"{r['counts']}",
        "train": lambda r: (f"{r['epoch_s']:.2f} s/epoch (train {r['train_s']:.2f} + val {r['val_s']:.2f}), "
                            f"val_score {r['val_score']:.4f}, peak {r.get('gpu_peak_bytes', 0) / 2**30:.2f} GiB"),
        "sweep": lambda r: (f"{r['ended']} trials in {r['wall_s']:.0f} s: {r['trials_per_hour']:.0f} trials/hour, "
                            f"gpu_ids {r['gpu_ids']}, devices {r['devices']}"),
        "predict": lambda r: ", ".join(f"{k} {v['b1_ms']:.2f}/{v['b32_ms']:.2f} ms" if "b1_ms" in v else
                                       f"{k}: {v.get('skipped') or v.get('error')}" for k, v in r["backends"].items()),
    }[stage.split("_")[0]]
    return f"{stage}: ok in {result['seconds']} s: {figures(result)}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/gpu.py", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the output folder (gpu.json, gpu.log)")
    p.add_argument("--data-root", help="a dataset root holding tire (default: the carry's, else demo data)")
    p.add_argument("--carry", default=str(REPO / ".gpu_carry"), help="bench/gpu_carry.py's folder")
    p.add_argument("--budget-s", type=float, default=480.0, help="the whole run's time, every stage included")
    p.add_argument("--cpu-dry-run", action="store_true", help="every stage at tiny sizes on the CPU")
    p.add_argument("--keep-work", action="store_true", help="keep the scratch folder (its path is logged)")
    args = p.parse_args(argv)
    if args.budget_s < 60:
        p.error(f"--budget-s {args.budget_s:g}: at least 60 s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Run(out, args.budget_s, "cpu-dry-run" if args.cpu_dry_run else "gpu")
    try:
        return run_all(run, args)
    finally:
        run.save()
        if args.keep_work:
            run.say(f"scratch kept: {run.work}")
        else:
            shutil.rmtree(run.work, ignore_errors=True)


def run_all(run: Run, args: argparse.Namespace) -> int:
    mode = MODES[run.mode]
    run.env.update(mode["env"])
    env = run_stage(run, "env", {"stage": "env"}, min(ENV_LIMIT_S, run.left()))
    run.doc["environment"] = env
    if env["status"] == "ok" and not env["cuda"] and run.mode == "gpu":
        run.doc.update(cuda=False, message="no CUDA device found")
        run.say("no CUDA device found")
        return 0
    run.doc["cuda"] = env.get("cuda")
    run.say(summary("env", env))
    run.doc["data"] = prepare(run, args)
    run.say(f"data: {run.doc['data']}", console=False)
    run.save()
    for name, spec in stages(run, mode, run.doc["data"]):
        limit = stage_limit(run, name)
        if limit < MIN_STAGE_S:
            result = {"status": "skipped", "seconds": 0, "error": f"its share of the {run.left():.0f} s left is "
                      f"{limit:.0f} s, under {MIN_STAGE_S:.0f} s"}
        else:
            result = run_stage(run, name, spec, limit)
        run.doc["stages"][name] = result
        run.say(summary(name, result))
        run.save()
    stages_ = run.doc["stages"]
    run.doc["bf16_minus_fp32_val_score"] = targets(stages_, False)["bf16 - fp32 val_score"]["value"]
    run.doc["same_trials"] = same_trials(stages_)
    run.doc["targets"] = targets(stages_, run.mode != "gpu")
    for name, target in run.doc["targets"].items():
        if isinstance(target, dict):
            run.say(f"target {name}: {target['value']} ({target['target']}): "
                    f"{'met' if target['met'] else 'not met' if target['met'] is False else 'not measured'}")
    failed = [n for n, r in stages_.items() if r["status"] != "ok"]
    run.say(f"done in {run.elapsed():.0f} s; " + (f"not ok: {', '.join(failed)}" if failed else "every stage ran"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
