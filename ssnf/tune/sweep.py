"""One Optuna study per category, on local Ray or an existing cluster; resumable; Parquet results.

``run_sweep(options, spaces)`` checks everything it can before it writes anything (space, data root,
categories and their splits, the space's keys and values on a few samples, the storage, resume state,
the resources the cluster can grant), then for each category prepares the data once (decoded images,
frozen-backbone features, validation set), shares it with every trial through Ray's object store, and
runs the study: Optuna TPE (seeded) or random search, ASHA over epochs or no scheduler, at most
``max_concurrent`` trials at a time, failed workers retried from their last checkpoint.

On a cluster (``address``): an address where no cluster answers, resources no single node can grant and
a local storage path that not every node sees are refused before anything is written. Trial workers
run at normal CPU priority (``trial_runtime_env``, ``trial_niceness`` 0): Ray starts workers at niceness 15,
and on a node that anything else keeps busy they then got a few per cent of a core, so trials crawled and a
loaded cluster looked stalled.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import ray
from pyarrow import fs as pafs
from ray import tune

from ssnf.backbones.extractor import check_backbone
from ssnf.config import SSNFConfig, flatten, from_dict, merge, to_dict
from ssnf.data.layouts import load_index
from ssnf.data.splits import Splits, make_splits
from ssnf.errors import DataError, SSNFError
from ssnf.files import atomic_path
from ssnf.prepared import check_splits
from ssnf.results import filesystem, pareto_front, ranked, read_results, row_config
from ssnf.tune.overrides import CONFIRMS_KEY, EXTRACTOR_KEYS, SEED_KEY, check_space
from ssnf.tune.journal import JournalSync, close_orphans, journal_uri, local_journal, storage
from ssnf.tune.results import ParquetResults
from ssnf.tune.search import BUDGETS, GIVE_UP_AFTER, SCHEDULERS, SEARCHERS, BudgetStopper, parse_objectives, scheduler, searcher
from ssnf.tune.shared import start_store
from ssnf.tune.trainable import run_trial

PROBE_TIMEOUT_S = 3.0  # how long --address may take to answer
AUTOSCALER_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` leaves the head's autoscaling config


def trial_runtime_env(niceness: int = 0) -> dict:
    """The sweep's Ray job: every worker (its trials) at ``niceness`` (Ray's own default is 15)."""
    return {"env_vars": {"RAY_worker_niceness": str(niceness)}}


class SweepInterrupted(SSNFError):
    """The sweep was stopped (Ctrl-C) before every trial ended; ``--resume`` continues it."""


@dataclass
class SweepOptions:
    data_root: str
    categories: list[str]
    space: str = "smoke"
    num_samples: int = 8
    max_epochs: int = 6
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 2
    storage: str = "ray_results"
    name: str = "ssnf"
    resume: bool = False
    address: str | None = None
    seed: int = 0
    searcher: str = "tpe"
    scheduler: str = "asha"
    base: dict = field(default_factory=dict)  # nested config values every trial starts from (--config)
    share_features: bool = True  # False: every trial extracts its own features (the benchmark's baseline)
    baseline: bool = True  # the space's ``baseline`` point (ssnf's default config), where it has one, is trial 0
    shared_storage: bool = False  # a local ``storage`` path is mounted at the same place on every node
    trial_niceness: int = 0  # CPU priority of the trials' processes (0: as any other job; Ray's default 15)
    trial_memory: float = 0.0  # GiB a trial's process may allocate (0: 60 % of its node's memory / concurrent trials)
    confirm: str | None = None  # a candidates Parquet (analysis select): re-train each with new seeds instead
    objectives: str = "val_score"  # comma-separated (ssnf.tune.search.OBJECTIVES): several give a Pareto front
    max_ms: float = 0.0  # a trial whose detector takes longer a image at batch 1 ends before training (0: no bound)
    max_gflops: float = 0.0  # likewise for GFLOP per image (0: no bound)
    # a trial's worker process runs the next trial of the same resources (no fresh process importing torch and the
    # library for each trial); False: a new actor per trial (Ray Tune's default)
    reuse_actors: bool = True
    seeds: int = 3  # confirmation: new seeds per candidate
    verbose: int = 1


@dataclass
class CategoryOutcome:
    category: str
    trials: pd.DataFrame  # this category's rows of the trials table
    best: pd.Series | None  # the full-budget trial with the highest final val_score


def experiment_uri(options: SweepOptions) -> str:
    storage = options.storage
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())  # Ray wants an absolute storage path
    return f"{storage.rstrip('/')}/{options.name}"


def _exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def check_run_options(options: SweepOptions) -> None:
    """The checks a sweep and a confirmation run share (counts, priority, resources, seeds)."""
    for name, value in (("num-samples", options.num_samples), ("max-epochs", options.max_epochs),
                        ("max-concurrent", options.max_concurrent), ("seeds", options.seeds)):
        if value < 1:
            raise SSNFError(f"--{name}={value} must be at least 1")
    if not 0 <= options.trial_niceness <= 19:
        raise SSNFError(f"--trial-niceness={options.trial_niceness} must be between 0 and 19")
    if options.trial_memory < 0:
        raise SSNFError(f"--trial-memory={options.trial_memory} must be 0 (automatic) or a size in GiB")
    if options.cpus_per_trial <= 0 or options.gpus_per_trial < 0:
        raise SSNFError("--cpus-per-trial must be positive and --gpus-per-trial not negative")
    for name in BUDGETS:
        if getattr(options, name) < 0:
            raise SSNFError(f"--{name.replace('_', '-')}={getattr(options, name):g} must be 0 (no bound) or positive")


def budget(options: SweepOptions) -> dict[str, float]:
    """The sweep's cost bounds that are set (``ssnf.tune.search.BUDGETS`` option -> limit)."""
    return {name: float(getattr(options, name)) for name in BUDGETS if getattr(options, name) > 0}


def check_resume(options: SweepOptions) -> None:
    """``--resume`` of an experiment whose results this ssnf cannot extend (another schema version): refused
    now, in one line, not after its remaining trials have run."""
    if options.resume and _exists(f"{experiment_uri(options)}/results/trials"):
        read_trials(experiment_uri(options))  # raises ResultsError on another schema version


def check_options(options: SweepOptions, spaces: dict[str, Callable]) -> dict[str, tuple[SSNFConfig, Splits]]:
    """Every check that needs no cluster; returns each category's base config and its (checked) splits."""
    if options.space not in spaces:
        raise SSNFError(f"unknown search space {options.space!r}; known: {', '.join(sorted(spaces))}")
    if options.searcher not in SEARCHERS or options.scheduler not in SCHEDULERS:
        raise SSNFError(f"--searcher must be one of {SEARCHERS} and --scheduler one of {SCHEDULERS}")
    check_run_options(options)
    parse_objectives(options.objectives)
    if not options.categories:
        raise SSNFError("no categories given: --categories a,b")
    root = Path(options.data_root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist")
    configs = {}
    for category in options.categories:
        tree = merge(options.base, {
            "data.root": str(root.resolve()), "data.category": category, "train.epochs": options.max_epochs,
            "train.seed": options.seed, "train.threads": max(1, int(options.cpus_per_trial)),
            # a trial with a GPU share trains on it; train.device=cpu set on purpose is kept
            "train.device": _trial_device(options),
        })
        cfg = from_dict(SSNFConfig, tree)
        splits = make_splits(load_index(cfg.data), cfg.data)  # opens every image header and mask: once
        check_splits(cfg, splits)
        seen = check_space(spaces[options.space], to_dict(cfg), seed=options.seed)
        for backbone in {repr(c.backbone): c.backbone for c in [cfg, *seen]}.values():
            check_backbone(backbone)  # every extractor setting the space offers: weights present, strides known
        configs[category] = (cfg, splits)
    uri = experiment_uri(options)
    started = [c for c in options.categories if _exists(f"{uri}/{c}")]
    if options.resume and not started:
        raise SSNFError(f"--resume: nothing to resume at {uri} (no study of {', '.join(options.categories)} there)")
    if not options.resume and _exists(uri):
        raise SSNFError(f"experiment {uri} exists already: add --resume to continue it, or choose another --name")
    check_resume(options)
    return configs


def _trial_device(options: SweepOptions) -> str:
    device = options.base.get("train", {}).get("device", "auto")
    if options.gpus_per_trial > 0:
        return "cpu" if device == "cpu" else "cuda"
    return "cpu"


def probe_address(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail in seconds, with one line, where no Ray cluster answers at ``address`` (``ray.init`` would
    retry for minutes). ``auto`` is resolved as Ray resolves it (``RAY_ADDRESS``, then the cluster started
    last on this machine)."""
    if address.startswith(("http://", "https://")):
        raise SSNFError(f"--address {address} is a dashboard (job server) address: submit with `ray job submit "
                        f"--address {address} ... -- python tune_main.py --address auto ...` (cluster/README.md)")
    target = address.removeprefix("ray://")
    if target == "auto":  # (not canonicalize_bootstrap_address: it rewrites 127.0.0.1 to another interface)
        from ray._private.services import get_ray_address_from_environment

        try:
            target = get_ray_address_from_environment("auto", None) or ""
        except (ConnectionError, ValueError):
            target = ""
        if not target or target == "auto":
            raise SSNFError("--address auto: no Ray cluster is running on this machine and RAY_ADDRESS is not set: "
                            "start one (`ray start --head`) or pass the head's HOST:PORT")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise SSNFError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise SSNFError(f"no Ray cluster answers at {target} ({exc.strerror or exc} within {timeout:g} s): "
                        "check --address, or start the cluster first") from None


def start_ray(options: SweepOptions) -> None:
    if not ray.is_initialized():  # (a caller's own session, e.g. the tests', is used as it is)
        if options.address:
            probe_address(options.address)
            ray.init(address=options.address, logging_level=logging.WARNING,
                     runtime_env=trial_runtime_env(options.trial_niceness))
        else:  # a private local cluster on the loopback interface, no dashboard
            ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.WARNING,
                     runtime_env=trial_runtime_env(options.trial_niceness))
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    check_resources(options, [n.get("Resources", {}) for n in nodes] + launchable_node_types())
    check_storage(options, {n.get("NodeManagerAddress", "") for n in nodes}, _driver_ip())


def launchable_node_types(path: str = AUTOSCALER_CONFIG) -> list[dict]:
    """Resources of the node types the cluster's autoscaler may still start: on the head of a cluster from
    `ray up` (where `ray submit` and `ray job submit` run the driver), GPU workers with ``min_workers: 0``
    count as grantable before the first one exists."""
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        return []
    try:
        types = (yaml.safe_load(file.read_text()) or {}).get("available_node_types") or {}
    except (OSError, yaml.YAMLError):
        return []
    return [dict(t.get("resources") or {}) for t in types.values() if (t.get("max_workers") or 0) > 0]


def check_resources(options: SweepOptions, nodes: list[dict]) -> None:
    """A trial's CPUs and GPUs must fit on one node (Ray does not split a trial across nodes). ``nodes``:
    the live nodes' resources, and those of node types the autoscaler may start."""
    total = {k: sum(n.get(k, 0.0) for n in nodes) for k in ("CPU", "GPU")}
    if options.gpus_per_trial > 0 and total["GPU"] == 0:
        raise SSNFError(f"--gpus-per-trial {options.gpus_per_trial:g}, but no node of this cluster has a GPU "
                        "(leave it at 0 to train on CPUs)")
    fits = [n for n in nodes if n.get("CPU", 0.0) >= options.cpus_per_trial and n.get("GPU", 0.0) >= options.gpus_per_trial]
    if not fits:
        biggest = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
        raise SSNFError(
            f"a trial needs {options.cpus_per_trial:g} CPU and {options.gpus_per_trial:g} GPU on one node, but no "
            f"node has them (the largest has {biggest.get('CPU', 0.0):g} CPU, {biggest.get('GPU', 0.0):g} GPU; "
            f"the cluster has {total['CPU']:g} CPU, {total['GPU']:g} GPU in all {len(nodes)} nodes)")


def _driver_ip() -> str:
    try:
        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - only used to compare addresses
        return ""


def check_storage(options: SweepOptions, node_ips: set[str], driver_ip: str) -> None:
    """A local storage path is where the trials' checkpoints go: every node must see the same folder.
    Accepted when every node runs on the driver's machine (its address, or a loopback address, which only
    a node on this machine can have), or when the user declares the path shared."""
    if "://" in options.storage or options.shared_storage:
        return
    others = sorted(ip for ip in node_ips if ip and ip != driver_ip and not _loopback(ip))
    if others:
        raise SSNFError(
            f"--storage {options.storage} is a local folder, but {len(others)} node(s) of this cluster run on other "
            f"machines ({', '.join(others[:3])}): pass a cloud URI (s3://bucket/sweeps, gs://...) or a folder "
            "mounted at the same path on every node with --shared-storage")


def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def trial_dirname(trial) -> str:
    """Short trial folders (Ray's default spells the whole config into the name)."""
    return f"trial_{trial.trial_id}"


def read_trials(uri: str) -> pd.DataFrame:
    fs, path = filesystem(f"{uri}/results/trials")
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return pd.DataFrame()
    return read_results([uri]).trials


@dataclass
class Confirmation:
    """One category of a confirmation run: the candidates (id -> experiment, trial id, dotted overrides)
    and the new seeds each is trained with."""

    confirming: dict[str, tuple[str, str, dict]]
    seeds: list[int]

    @property
    def runs(self) -> int:
        return len(self.confirming) * len(self.seeds)


def _candidate_id(experiment: str, trial_id: str) -> str:
    return f"{experiment}:{trial_id}"


def check_confirm(options: SweepOptions) -> dict[str, tuple[SSNFConfig, Splits, Confirmation]]:
    """A confirmation run (``--confirm candidates.parquet``): each category's candidates re-trained with
    ``seeds`` new seeds (seeds none of them trained with), same budget, same data and backbone."""
    from ssnf.results import CONFIG_PREFIX

    if budget(options) or options.objectives != "val_score":
        raise SSNFError("--confirm re-trains chosen candidates with new seeds: --max-ms, --max-gflops and --objectives "
                        "belong to the sweep (select within a budget with `python -m analysis select --max-ms`)")
    file = Path(options.confirm).expanduser()
    if not file.is_file():
        raise SSNFError(f"--confirm {file}: no such file (write it with `python -m analysis select ... --out DIR`)")
    try:
        candidates = pd.read_parquet(file)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
        raise SSNFError(f"--confirm {file}: not a Parquet file ({str(exc).splitlines()[0]})") from None
    needed = {"experiment", "trial_id", "category", f"{CONFIG_PREFIX}train.seed"}
    if not needed <= set(candidates.columns) or not len(candidates):
        raise SSNFError(f"--confirm {file}: no candidate rows with {', '.join(sorted(needed))} "
                        "(write it with `python -m analysis select ... --out DIR`)")
    check_run_options(options)
    categories = options.categories or list(dict.fromkeys(candidates["category"]))
    missing = [c for c in categories if c not in set(candidates["category"])]
    if missing:
        raise SSNFError(f"--confirm {file}: no candidate of {', '.join(missing)} "
                        f"(it has {', '.join(sorted(set(candidates['category'])))})")
    out = {}
    for category in categories:
        rows = candidates[candidates["category"] == category]
        trees = [row_config(row) for _, row in rows.iterrows()]
        searched = {k.split(".", 1)[1] for k in EXTRACTOR_KEYS}  # may differ: each setting is prepared once
        fixed = {(repr({k: v for k, v in t["data"].items() if k not in searched | {"root"}}),
                  repr({k: v for k, v in t["backbone"].items() if k not in searched}),
                  t["train"]["precision"], t["train"]["epochs"]) for t in trees}
        if len(fixed) > 1:
            raise SSNFError(f"--confirm {file}: the candidates of {category} differ in data, backbone weights, "
                            "precision or budget; confirm them in separate runs")
        tree = trees[0]
        if options.data_root:
            tree["data"]["root"] = str(Path(options.data_root).expanduser().resolve())
        root = Path(tree["data"]["root"])
        if not root.is_dir():
            raise DataError(f"data root {root} (of the candidates of {category}) does not exist: pass --data-root")
        tree["train"].update(threads=max(1, int(options.cpus_per_trial)), device=_trial_device(options))
        cfg = from_dict(SSNFConfig, tree)
        splits = make_splits(load_index(cfg.data), cfg.data)
        check_splits(cfg, splits)
        used = {int(t["train"]["seed"]) for t in trees}
        seeds = [s for s in range(options.seed, options.seed + options.seeds + len(used)) if s not in used][: options.seeds]
        keep = ("data.", "backbone.", "train.threads", "train.device", "train.seed")
        confirming = {}
        for (_, row), t in zip(rows.iterrows(), trees):
            overrides = {k: v for k, v in flatten(t).items() if not k.startswith(keep) or k in EXTRACTOR_KEYS}
            confirming[_candidate_id(row["experiment"], row["trial_id"])] = (row["experiment"], row["trial_id"], overrides)
        out[category] = (cfg, splits, Confirmation(confirming, seeds))
    uri = experiment_uri(options)
    if not options.resume and _exists(uri):
        raise SSNFError(f"experiment {uri} exists already: add --resume to continue it, or choose another --name")
    if options.resume and not any(_exists(f"{uri}/{c}") for c in categories):
        raise SSNFError(f"--resume: nothing to resume at {uri}")
    return out


def run_sweep(options: SweepOptions, spaces: dict[str, Callable]) -> list[CategoryOutcome]:
    """The sweep (one Optuna study per category) or, with ``options.confirm``, the confirmation run (each
    candidate x each new seed, as a grid)."""
    if options.confirm:
        plans = {c: (cfg, splits, confirmation) for c, (cfg, splits, confirmation) in check_confirm(options).items()}
    else:
        plans = {c: (cfg, splits, None) for c, (cfg, splits) in check_options(options, spaces).items()}
    start_ray(options)
    uri = experiment_uri(options)
    space = None if options.confirm else spaces[options.space]
    resources = {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial}
    for category, (cfg, splits, confirmation) in plans.items():
        base = to_dict(cfg)
        store = None
        if options.share_features:  # per extractor setting: features, validation and test set, extractor, once
            store = start_store(splits, threads=max(1, int(options.cpus_per_trial)))
            ray.get(store.get.remote(base, count=False))  # the base setting now: a data problem shows before any trial
        confirming = confirmation.confirming if confirmation else None
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, base=base, store=store, private_cache=not options.share_features,
                                 memory_gib=options.trial_memory, slots=options.max_concurrent,
                                 confirming=confirming, cost_budget=budget(options)),
            resources)
        path = f"{uri}/{category}"
        stopper = BudgetStopper(min(GIVE_UP_AFTER, options.num_samples)) if budget(options) and confirmation is None else None
        sync = None
        if confirmation is None and "://" in uri:
            sync = JournalSync(str(local_journal(uri, category)), journal_uri(uri, category))
        if options.resume and tune.Tuner.can_restore(path):
            if sync is not None:
                sync.download()
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False)
        else:
            if sync is not None:
                sync.fresh()
            callback = ParquetResults(f"{uri}/results", options.name, category, base, options.cpus_per_trial, options.gpus_per_trial, space=space,
                                      space_name=None if confirmation else options.space, confirming=confirming,
                                      on_end=sync)
            if confirmation is None:
                baseline = getattr(space, "baseline", None) if options.baseline else None
                search = searcher(space, category, storage(local_journal(uri, category)),
                                  objectives=parse_objectives(options.objectives), budget=budget(options),
                                  searcher_name=options.searcher, seed=options.seed, num_samples=options.num_samples,
                                  max_concurrent=options.max_concurrent, budget_epochs=options.max_epochs,
                                  baseline=baseline)
                tune_config = tune.TuneConfig(search_alg=search, scheduler=scheduler(options.scheduler, options.max_epochs),
                                              num_samples=options.num_samples, trial_dirname_creator=trial_dirname,
                                              reuse_actors=options.reuse_actors)
                param_space = None
            else:  # a fixed grid: every candidate with every new seed, no early stopping
                tune_config = tune.TuneConfig(num_samples=1, max_concurrent_trials=options.max_concurrent,
                                              trial_dirname_creator=trial_dirname, reuse_actors=options.reuse_actors)
                param_space = {CONFIRMS_KEY: tune.grid_search(sorted(confirming)),
                               SEED_KEY: tune.grid_search(confirmation.seeds)}
            tuner = tune.Tuner(
                trainable, param_space=param_space, tune_config=tune_config,
                run_config=tune.RunConfig(
                    name=category, storage_path=uri, verbose=options.verbose,
                    failure_config=tune.FailureConfig(max_failures=2),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    callbacks=[callback], stop=stopper,
                ),
            )
        try:
            tuner.fit()
        finally:  # also after Ctrl-C: what the feature sets cost so far
            if store is not None:
                write_feature_stats(uri, category, ray.get(store.stats.remote()), options.verbose)
                ray.kill(store)  # its feature sets leave the object store before the next category's
        if stopper is not None and stopper.gave_up:
            raise SSNFError(stopper.message(budget(options), options.space))
        expected = confirmation.runs if confirmation else options.num_samples
        ended = read_trials(uri)
        ended = ended[ended["category"] == category]["trial_id"].nunique() if len(ended) else 0
        if ended < expected:  # Ray Tune returns normally after Ctrl-C / SIGUSR1
            raise SweepInterrupted(
                f"the sweep stopped with {ended} of {expected} trials of {category} ended; "
                f"continue with --name {options.name} --resume")
        if confirmation is None:
            close_orphans(local_journal(uri, category), category)
            if sync is not None:
                sync()
    return summarize(uri, list(plans))


def write_feature_stats(uri: str, category: str, stats: list[dict], verbose: int = 1) -> None:
    """Print what each extractor setting's shared data cost, and add it to
    ``<experiment>/results/features/<category>.json`` (a resumed sweep's store appends its own entries)."""
    import datetime
    import json

    fs, path = filesystem(f"{uri}/results/features/{category}.json")
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    previous = []
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        with fs.open_input_stream(path) as f:
            previous = json.loads(f.read().decode())
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    text = json.dumps(previous + [{**s, "written_at": now} for s in stats], indent=1)
    if isinstance(fs, pafs.LocalFileSystem):
        with atomic_path(Path(path)) as tmp:
            tmp.write_text(text)
    else:  # an object store publishes the object once its upload completes
        with fs.open_output_stream(path) as f:
            f.write(text.encode())
    if verbose:
        print(f"feature sets of {category} (shared through the object store; {path}):")
        for s in stats:
            print(f"  {s['features_id']}  {s['backbone']:<22} strides {','.join(map(str, s['strides'])):<8} "
                  f"{s['image_size']:>4} px  prepared in {s['prepare_s']:7.1f} s  {s['bytes'] / 2**20:8.1f} MiB  "
                  f"{s['trials']:3d} trials")


def summarize(uri: str, categories: list[str]) -> list[CategoryOutcome]:
    trials = read_trials(uri)
    outcomes = []
    for category in categories:
        rows = trials[trials["category"] == category] if len(trials) else trials
        best = ranked(rows) if len(rows) else rows
        outcomes.append(CategoryOutcome(category, rows, best.iloc[0] if len(best) else None))
    return outcomes


def best_table(outcomes: list[CategoryOutcome]) -> str:
    """The per-category best, by final validation score among trials that trained the full budget."""
    varying = ("config.model.blocks", "config.model.hidden", "config.model.couplings", "config.loss.weight",
               "config.loss.form", "config.train.lr", "config.train.augment", "config.bank.enabled")
    lines = ["| category | trials (completed/stopped/failed) | best trial | val_score | val_score clean; nuisance FPR "
             "| test image AUROC | test pixel AUROC | test AUPRO | scoring (pixel map; image score) | "
             + " | ".join(v.removeprefix("config.") for v in varying) + " |",
             "|---" * (9 + len(varying)) + "|"]
    for o in outcomes:
        counts = o.trials["status"].value_counts().to_dict() if len(o.trials) else {}
        tally = f"{counts.get('completed', 0)}/{counts.get('stopped', 0)}/{counts.get('diverged', 0) + counts.get('error', 0)}"
        if o.best is None:
            lines.append(f"| {o.category} | {tally} | none completed |" + " |" * (6 + len(varying)))
            continue
        b = o.best
        lines.append(
            f"| {o.category} | {tally} | {b['trial_id']} | {b['final_val_score']:.4f} | "
            f"{_num(b.get('final_val_score_clean'))}; {_num(b.get('final_val_nuisance_fpr'))} | {_num(b['test_image_auroc'])} | "
            f"{_num(b['test_pixel_auroc'])} | {_num(b['test_aupro'])} | {b['final_val_map']}; "
            f"{b['final_val_image_score']} of {b['final_val_image_map']} | " + " | ".join(_cell(b[v]) for v in varying) + " |")
    return "\n".join(lines)


def front_table(outcomes: list[CategoryOutcome], objectives: list[str]) -> str:
    """Per category, the Pareto front of a multi-objective sweep: val_score against its first cost objective."""
    from ssnf.tune.search import OBJECTIVES

    cost = OBJECTIVES[next(o for o in objectives if o != "val_score")][0]
    lines = [f"(front on val_score and {cost})", "| category | trial | val_score | ms/image batch 1 | ms/image batch 32 | "
             "GFLOP | image size | strides | blocks | couplings | hidden | bank |", "|---" * 12 + "|"]
    for o in outcomes:
        if not len(o.trials):
            continue
        front = pareto_front(o.trials, cost)
        for _, r in front[front["on_front"]].iterrows():
            lines.append(f"| {o.category} | {r['trial_id']} | {r['final_val_score']:.4f} | {r['cost_infer_ms_b1']:.1f} | "
                         f"{r['cost_infer_ms_b32']:.1f} | {r['cost_gflops']:.2f} | {r['config.data.image_size']} | "
                         f"{','.join(str(s) for s in r['config.backbone.strides'])} | {r['config.model.blocks']} | "
                         f"{r['config.model.couplings']} | {r['config.model.hidden']} | {r['config.bank.enabled']} |")
    return "\n".join(lines)


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _num(value) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:.4f}"


__all__ = ["SweepInterrupted", "SweepOptions", "best_table", "front_table", "experiment_uri", "run_sweep", "summarize"]
