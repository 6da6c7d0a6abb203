"""``msta sweep PLAN.yaml``: protocols x datasets x seeds (x shots) as runs with fixed directories,
trained and evaluated one after another here, or as Slurm jobs through submitit; then the report.

A plan (YAML; a name without a path is a plan shipped in ``msta/plans``)::

    out: runs/paper                    # run directories: OUT/PROTOCOL/DATASET[/Kshot]/seedS
    descriptions: cache/msta.db        # description cache of the consistency loss (optional); or
                                       # {default: a.db, ssv2: b.db, ssv2/16: c.db} (most specific wins)
    configs: [viclip-b16]              # presets or files before each protocol's own
    set: [model.pretrained=/w/ViCLIP-B_InternVid-FLT-10M.pth]   # overrides after them
    roots: {hmdb51: /videos/hmdb51}    # data.root per dataset
    seeds: [1, 2, 3]
    gpus: 1                            # more than one: the run is started with torchrun
    protocols:
      fewshot:
        datasets: [hmdb51, ucf101]
        shots: [2, 4, 8, 16]
        configs: ["{dataset}", "paper-{dataset}", fewshot]
        set: ["data.train_list=${data_dir}/splits/fewshot/{dataset}/train1_few_shot_{shots}.txt"]
        evaluate: [{target: hmdb51, root: /videos/hmdb51}, {views: 1x1}]   # beyond the default one

``{protocol}``, ``{dataset}``, ``{shots}`` and ``{seed}`` are replaced in configs and overrides.
A run with ``sweep.json`` marked complete is skipped; one with a checkpoint but no
``train_summary.json`` is resumed (as ``msta train --resume``); a trained one is evaluated.
Each run is evaluated on both checkpoints (``last`` and ``best``): extra evaluations are kept as
``eval_TAG_{last,best}.json``, the configured one as ``eval_{last,best}.json``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from descgen.fileio import write_text_atomic
from msta.errors import MstaError
from msta.report import SWEEP_FILE
from msta.run import SUMMARY_FILE

PLANS_DIR = Path(__file__).resolve().parent / "plans"
_SLOT = re.compile(r"(?<!\$)\{(protocol|dataset|shots|seed)\}")
_PLAN_KEYS = {"out", "descriptions", "configs", "set", "roots", "seeds", "gpus", "protocols"}
_PROTOCOL_KEYS = {"datasets", "shots", "seeds", "configs", "set", "evaluate"}


class SweepError(MstaError):
    """A plan that cannot be used, or runs that failed."""


@dataclass
class PlannedRun:
    protocol: str
    dataset: str
    shots: int | None
    seed: int
    run_dir: str
    configs: list[str]
    overrides: list[str]
    evaluate: list[dict[str, Any]] = field(default_factory=list)
    gpus: int = 1
    descriptions: str | None = None


# --------------------------------------------------------------------------- the plan


def resolve_plan(name: str | Path) -> Path:
    p = Path(name)
    if p.is_file():
        return p
    shipped = PLANS_DIR / f"{Path(str(name)).stem}.yaml"
    if "/" not in str(name) and shipped.is_file():
        return shipped
    known = ", ".join(sorted(x.stem for x in PLANS_DIR.glob("*.yaml"))) or "none"
    raise SweepError(f"plan {str(name)!r} is neither a file nor a shipped plan (plans: {known})")


def load_plan(name: str | Path) -> dict[str, Any]:
    path = resolve_plan(name)
    try:
        plan = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SweepError(f"cannot read plan {path}: {exc}") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("protocols"), dict) or not plan["protocols"]:
        raise SweepError(f"plan {path}: needs a 'protocols' mapping (name: {{datasets: [...], ...}})")
    unknown = set(plan) - _PLAN_KEYS
    for name_, spec in plan["protocols"].items():
        unknown |= {f"protocols.{name_}.{k}" for k in set(spec or {}) - _PROTOCOL_KEYS}
    if unknown:
        raise SweepError(f"plan {path}: unknown keys: {', '.join(sorted(unknown))}")
    return plan


def _fill(text: str, slots: dict[str, Any]) -> str:
    return _SLOT.sub(lambda m: str(slots[m.group(1)]), str(text))


def run_dir_for(out: str | Path, protocol: str, dataset: str, shots: int | None, seed: int) -> Path:
    d = Path(out) / protocol / dataset
    return (d / f"{shots}shot" if shots is not None else d) / f"seed{seed}"


def expand_plan(plan: dict[str, Any]) -> list[PlannedRun]:
    """Every run of the plan, in a fixed order (protocols, datasets, shots, seeds as written)."""
    out = plan.get("out", "runs/sweep")
    runs = []
    for protocol, spec in plan["protocols"].items():
        spec = spec or {}
        datasets = spec.get("datasets") or []
        if not datasets:
            raise SweepError(f"plan: protocol {protocol!r} lists no datasets")
        for dataset in datasets:
            for shots in spec.get("shots") or [None]:
                for seed in spec.get("seeds") or plan.get("seeds") or [1]:
                    runs.append(_planned(plan, protocol, spec, dataset, shots, int(seed), out))
    return runs


def _planned(plan, protocol, spec, dataset, shots, seed, out) -> PlannedRun:
    slots = {"protocol": protocol, "dataset": dataset, "shots": shots, "seed": seed}
    run_dir = run_dir_for(out, protocol, dataset, shots, seed)
    configs = [_fill(c, slots) for c in [*(plan.get("configs") or []), *(spec.get("configs") or [])]]
    overrides = [_fill(s, slots) for s in [*(plan.get("set") or []), *(spec.get("set") or [])]]
    root = (plan.get("roots") or {}).get(dataset)
    if root:
        overrides.insert(0, f"data.root={root}")
    overrides += [f"run.out={run_dir}", f"run.seed={seed}"]
    evaluate = [{k: _fill(v, slots) for k, v in e.items()} for e in spec.get("evaluate") or []]
    return PlannedRun(
        protocol,
        dataset,
        shots,
        seed,
        str(run_dir),
        configs,
        overrides,
        evaluate,
        int(plan.get("gpus", 1)),
        _descriptions(plan.get("descriptions"), dataset, shots),
    )


def _descriptions(spec: Any, dataset: str, shots: int | None) -> str | None:
    """The description cache of a run: one path for all, or a mapping with ``default`` and
    ``DATASET`` or ``DATASET/SHOTS`` keys (the most specific wins)."""
    if not isinstance(spec, dict):
        return spec
    for key in (f"{dataset}/{shots}", dataset, "default"):
        if key in spec:
            return spec[key]
    return None


# --------------------------------------------------------------------------- one run


def run_state(run: PlannedRun) -> str:
    """``done``, ``evaluate`` (trained), ``resume`` (interrupted) or ``new``."""
    d = Path(run.run_dir)
    meta = d / SWEEP_FILE
    if meta.is_file():
        try:
            if json.loads(meta.read_text(encoding="utf-8")).get("complete"):
                return "done"
        except ValueError:
            pass
    if (d / SUMMARY_FILE).is_file():
        return "evaluate"
    if (d / "checkpoints" / "last.json").is_file():
        return "resume"
    return "new"


def _write_meta(run: PlannedRun, complete: bool) -> None:
    meta = {**asdict(run), "complete": complete, "time": time.time()}
    write_text_atomic(Path(run.run_dir) / SWEEP_FILE, json.dumps(meta, indent=1))


def execute(run: PlannedRun, progress: bool = False) -> str:
    """Train (or resume), then evaluate one planned run; returns the state it started from.
    Module level and picklable: this is also what a Slurm job runs."""
    state = run_state(run)
    if state == "done":
        return state
    _write_meta(run, complete=False)
    if state in ("new", "resume"):
        _train(run, resume=state == "resume", progress=progress)
    _evaluate(run)
    _write_meta(run, complete=True)
    return state


def _train(run: PlannedRun, resume: bool, progress: bool) -> None:
    if run.gpus > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={run.gpus}"]
        cmd += ["-m", "msta.cli", "train", "--no-progress"]
        cmd += [a for c in run.configs for a in ("-c", c)] + [a for s in run.overrides for a in ("--set", s)]
        cmd += ["--descriptions", run.descriptions] if run.descriptions else []
        cmd += ["--resume"] if resume else []
        if subprocess.run(cmd, check=False).returncode != 0:
            raise SweepError(f"torchrun training of {run.run_dir} failed")
        return
    from msta.config import load_config
    from msta.train import train

    cfg = load_config(run.configs, run.overrides)
    train(cfg, descriptions=run.descriptions, resume=resume, progress=progress)


def _evaluate(run: PlannedRun) -> None:
    """The extra evaluations first (their files renamed to ``eval_TAG_*``), the configured one last."""
    from msta.evaluate import evaluate_run
    from msta.run import run_config

    d = Path(run.run_dir)
    for e in run.evaluate:
        tag = e.get("tag") or e.get("target") or f"views{e.get('views', '')}"
        evaluate_run(
            d, views=e.get("views"), target=e.get("target"), root=e.get("root"),
            checkpoint="both", plots=False, progress=False,
        )  # fmt: skip
        for which in ("last", "best"):
            src = d / f"eval_{which}.json"
            if src.is_file():
                src.replace(d / f"eval_{tag}_{which}.json")
    if run_config(d).data.val_list:
        evaluate_run(d, checkpoint="both", plots=False, progress=False)


# --------------------------------------------------------------------------- the sweep


@dataclass
class SlurmOptions:
    partition: str | None = None
    time_min: int = 240
    gpus: int = 1
    cpus: int = 8
    folder: str | None = None  # submitit's logs (default OUT/slurm)


def slurm_executor(options: SlurmOptions, folder: Path):
    """A submitit executor for Slurm with one task per job (torchrun starts the GPU processes)."""
    import submitit

    try:
        ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    except RuntimeError as exc:
        raise SweepError(f"--slurm: {exc}") from None
    params: dict[str, Any] = {
        "timeout_min": options.time_min,
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": options.gpus,
        "cpus_per_task": options.cpus,
        "name": "msta-sweep",
    }
    if options.partition:
        params["slurm_partition"] = options.partition
    ex.update_parameters(**params)
    return ex


def sweep(
    plan_name: str | Path,
    slurm: SlurmOptions | None = None,
    executor: Any = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or submit, with ``slurm`` or an ``executor``) every run of a plan that is not done,
    then write the report to ``OUT/report``. Failed runs are listed in the report and raised at
    the end as one :class:`SweepError`."""
    plan = load_plan(plan_name)
    runs = expand_plan(plan)
    if slurm is not None:
        for r in runs:
            r.gpus = slurm.gpus
    states = {r.run_dir: run_state(r) for r in runs}
    todo = [r for r in runs if states[r.run_dir] != "done"]
    log(f"{len(runs)} runs: {len(runs) - len(todo)} done, {len(todo)} to run")
    if slurm is not None and executor is None:
        executor = slurm_executor(slurm, Path(slurm.folder or Path(plan.get("out", "runs/sweep")) / "slurm"))
    failed = _submit(todo, executor, log) if executor is not None else _run_here(todo, progress, log)
    from msta.report import build_report, write_report

    report = build_report([r.run_dir for r in runs])
    files = write_report(report, Path(plan.get("out", "runs/sweep")) / "report")
    log(f"report: {files['markdown']}")
    if failed:
        raise SweepError(f"{len(failed)} of {len(todo)} runs failed: " + "; ".join(failed), 1)
    return {"states": states, "report": {k: str(v) for k, v in files.items()}}


def _run_here(todo: list[PlannedRun], progress: bool, log) -> list[str]:
    failed = []
    for i, r in enumerate(todo, 1):
        log(f"[{i}/{len(todo)}] {r.run_dir} ({run_state(r)})")
        try:
            execute(r, progress=progress)
        except MstaError as exc:
            failed.append(f"{r.run_dir}: {exc}")
            log(f"failed: {r.run_dir}: {exc}")
    return failed


def _submit(todo: list[PlannedRun], executor, log) -> list[str]:
    jobs = [(r, executor.submit(execute, r)) for r in todo]
    for r, job in jobs:
        log(f"submitted {r.run_dir}: job {job.job_id}")
    failed = []
    for r, job in jobs:
        try:
            job.result()
        except Exception as exc:  # noqa: BLE001 - a job's failure is reported with the others
            failed.append(f"{r.run_dir}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}")
    return failed
