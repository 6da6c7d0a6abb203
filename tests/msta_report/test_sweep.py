"""``msta sweep``: plan expansion, a small plan on synthetic videos end to end (train, evaluate,
report), skipping finished runs, resuming interrupted ones, and the Slurm path through submitit's
local executor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from msta.schedule import lr_factor
from msta.sweep import SweepError, expand_plan, load_plan, run_state, sweep
from tests.msta_train import make_synth

TINY = ["loss.consistency_weight=0", "optim.epochs=1", "optim.batch_size=4", "run.device=cpu"]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    return make_synth(tmp_path_factory.mktemp("synth") / "data")


def write_plan(path: Path, data: Path, out: Path, seeds=(1, 2)) -> Path:
    plan = {
        "out": str(out),
        "configs": ["synth"],
        "set": [f"data.root={data}", *TINY],
        "seeds": list(seeds),
        "protocols": {"synthetic": {"datasets": ["synth"], "set": ["run.log_every_steps={seed}"]}},
    }
    path.write_text(yaml.safe_dump(plan))
    return path


def test_paper_plan_expands_to_the_full_table():
    runs = expand_plan(load_plan("paper"))
    dirs = [r.run_dir for r in runs]
    assert len(dirs) == len(set(dirs)) == 4 * 3 + 3 * 4 + 1 + 1
    b2n = [r for r in runs if r.protocol == "base2novel" and r.dataset == "ucf101"]
    assert [r.seed for r in b2n] == [1, 2, 3]
    assert b2n[1].run_dir == "runs/paper/base2novel/ucf101/seed2"
    assert (
        "data.train_list=${data_dir}/splits/base2novel/lists/ucf101/fs_base_s2_train.txt" in b2n[1].overrides
    )
    assert b2n[1].configs == ["viclip-b16", "ucf101", "paper-ucf101", "base2novel"]
    few = next(r for r in runs if r.protocol == "fewshot" and r.dataset == "ssv2" and r.shots == 4)
    assert few.run_dir == "runs/paper/fewshot/ssv2/4shot/seed1"
    assert any(o.endswith("/fewshot/ssv2/train1_few_shot_4.txt") for o in few.overrides)
    assert few.descriptions == "cache/msta.db" and b2n[0].descriptions == "cache/msta.db"
    ssv2_16 = next(r for r in runs if r.protocol == "fewshot" and r.dataset == "ssv2" and r.shots == 16)
    assert ssv2_16.descriptions == "cache/msta-ssv2-8.db"
    zs = next(r for r in runs if r.protocol == "zeroshot")
    assert [e["target"] for e in zs.evaluate] == ["hmdb51", "ucf101", "k600"]


def test_bad_plan_is_a_user_error(tmp_path, msta_cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"protocols": {"fewshot": {"datasets": ["x"], "shot": [2]}}}))
    with pytest.raises(SweepError, match=r"protocols.fewshot.shot"):
        load_plan(bad)
    res = msta_cli(["sweep", str(bad)])
    assert res.returncode == 2 and "error: " in res.stderr


@pytest.mark.slow
def test_sweep_runs_here_skips_done_runs_and_resumes(tmp_path, synth_root, msta_cli):
    out = tmp_path / "runs"
    plan = write_plan(tmp_path / "plan.yaml", synth_root, out)
    res = msta_cli(["sweep", str(plan)])
    assert res.returncode == 0, res.stderr
    seeds = [out / "synthetic" / "synth" / f"seed{s}" for s in (1, 2)]
    for d in seeds:
        assert (d / "train_summary.json").is_file() and (d / "eval_last.json").is_file()
        assert json.loads((d / "sweep.json").read_text())["complete"] is True
    report = json.loads((out / "report" / "report.json").read_text())
    assert [g["seeds"] for g in report["groups"]] == [[1, 2]]
    assert report["groups"][0]["checkpoints"]["last"]["top1"]["n"] == 2
    assert (out / "report" / "report.md").is_file() and (out / "report" / "report.png").is_file()

    # The learning rate is logged: after optimizer step k, the rate of the next step (synth: warmup_cosine).
    rows = [json.loads(x) for x in (seeds[0] / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["type"] == "train"]
    assert len(train_rows) == 4  # log_every_steps={seed}=1
    for r in train_rows:
        assert r["lr"] == pytest.approx(0.02 * lr_factor(r["global_step"], 4, 4, 0.1, "warmup_cosine"))

    stamp = {d: (d / "train_summary.json").stat().st_mtime_ns for d in seeds}
    res = msta_cli(["sweep", str(plan)])
    assert res.returncode == 0 and "2 runs: 2 done, 0 to run" in res.stderr
    assert {d: (d / "train_summary.json").stat().st_mtime_ns for d in seeds} == stamp

    # An interrupted run (checkpoint, no summary) is resumed, not started again.
    (seeds[1] / "train_summary.json").unlink()
    (seeds[1] / "sweep.json").unlink()
    runs = expand_plan(load_plan(plan))
    assert [run_state(r) for r in runs] == ["done", "resume"]
    res = msta_cli(["sweep", str(plan)])
    assert res.returncode == 0, res.stderr
    # Its training had reached the last epoch: the resume says so and the sweep evaluates it.
    assert "(resume)" in res.stderr and "already finished" in res.stderr, res.stderr
    assert [run_state(r) for r in runs] == ["done", "done"]


@pytest.mark.slow
def test_sweep_through_submitit_local_executor(tmp_path, synth_root):
    submitit = pytest.importorskip("submitit")
    out = tmp_path / "runs"
    plan = write_plan(tmp_path / "plan.yaml", synth_root, out, seeds=(3,))
    executor = submitit.LocalExecutor(folder=str(tmp_path / "jobs"))
    executor.update_parameters(timeout_min=10)
    result = sweep(plan, executor=executor, log=lambda m: None)
    run_dir = out / "synthetic" / "synth" / "seed3"
    assert result["states"] == {str(run_dir): "new"}
    assert json.loads((run_dir / "sweep.json").read_text())["complete"] is True
    assert list((tmp_path / "jobs").glob("*_result.pkl"))  # it ran as a submitit job
    report = json.loads(Path(result["report"]["json"]).read_text())
    assert report["groups"][0]["seeds"] == [3]


FAKE_SBATCH = """#!/bin/sh
# Starts the job in the background, as a one-node Slurm allocation would, and answers like sbatch.
here=$(dirname "$0")
n=$(( $(cat "$here/counter" 2>/dev/null || echo 100) + 1 ))
echo $n > "$here/counter"
echo "$@" >> "$here/sbatch.calls"
SLURM_JOB_ID=$n SLURM_NTASKS=1 SLURM_JOB_NUM_NODES=1 SLURM_NODEID=0 SLURM_JOB_NODELIST=localhost \\
  SLURM_PROCID=0 SLURM_LOCALID=0 nohup bash "$1" > "$here/job_$n.log" 2>&1 &
echo "Submitted batch job $n"
"""
FAKE_SRUN = """#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in --output|--error) shift 2;; --*) shift;; *) break;; esac
done
exec "$@"
"""


def _fake_slurm(bin_dir: Path) -> None:
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN), ("sacct", "#!/bin/sh\nexit 0\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)


def test_slurm_without_slurm_is_a_user_error(tmp_path, monkeypatch, msta_cli):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    plan = write_plan(tmp_path / "plan.yaml", tmp_path, tmp_path / "runs", seeds=(1,))
    res = msta_cli(["sweep", str(plan), "--slurm"])
    assert res.returncode == 2 and "--slurm" in res.stderr and "slurm" in res.stderr.lower()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sweep_with_slurm_submits_through_sbatch(tmp_path, synth_root, monkeypatch, msta_cli):
    import os

    _fake_slurm(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "runs"
    plan = write_plan(tmp_path / "plan.yaml", synth_root, out, seeds=(1,))
    res = msta_cli(["sweep", str(plan), "--slurm", "--partition", "debug", "--time", "5", "--gpus", "1"])
    assert res.returncode == 0, res.stderr + (tmp_path / "bin" / "job_101.log").read_text()
    submission = Path((tmp_path / "bin" / "sbatch.calls").read_text().split()[0]).read_text()
    assert "#SBATCH --partition=debug" in submission and "#SBATCH --time=5" in submission
    run_dir = out / "synthetic" / "synth" / "seed1"
    assert json.loads((run_dir / "sweep.json").read_text())["complete"] is True
    assert (out / "report" / "report.md").is_file()
    res = msta_cli(["sweep", str(plan), "--slurm"])
    assert res.returncode == 0 and "1 runs: 1 done, 0 to run" in res.stderr
