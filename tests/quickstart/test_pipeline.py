"""The pieces of the quickstart pipeline that need no LLM, and the ``descgen serve`` command line.

Fast: a loopback fake of the OpenAI API stands in for the vLLM server.
"""

from __future__ import annotations

import importlib.util
import io
import json
import signal
import sys
from pathlib import Path
from types import ModuleType

import pytest

from descgen.errors import DescgenError
from descgen.serve import ServerError
from tests.descgen.fake_openai import FakeOpenAI
from tests.descgen_helpers import write_classes

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["Moving a shape from left to right", "Moving a shape from right to left"]


def _load_pipeline() -> ModuleType:
    spec = importlib.util.spec_from_file_location("quickstart_pipeline", REPO / "scripts" / "quickstart.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


qs = _load_pipeline()


def _settings(tmp_path: Path, **env: str):
    return qs.Settings.from_env({"HOME": str(tmp_path / "user"), **env}, cwd=tmp_path, repo=REPO)


def _write_classes(s) -> None:
    s.data.mkdir(parents=True)
    write_classes(s.classes, CLASSES)


def _ui() -> tuple:
    out = io.StringIO()
    return qs.Ui(started=0.0, out=out, color=False), out


def test_settings_defaults_and_relative_paths(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    assert s.home == REPO / ".quickstart" and s.cache == REPO / "cache" / "quickstart.db"
    assert s.models == tmp_path / "user" / ".cache" / "msta-toolkit" / "models"
    assert s.model_name == "gemma-3-270m" and s.user_model is None and s.prompt is None

    s = _settings(
        tmp_path,
        QUICKSTART_HOME="work",
        QUICKSTART_CACHE="c/q.db",
        QUICKSTART_MODEL="ckpt/my-model",
        XDG_CACHE_HOME="/xdg",
        QUICKSTART_PROMPT="my.toml",
    )
    assert s.home == tmp_path / "work" and s.cache == tmp_path / "c" / "q.db"
    assert s.models == Path("/xdg/msta-toolkit/models")
    assert s.model_dir == tmp_path / "ckpt" / "my-model" and s.model_name == "my-model"
    assert s.classes == tmp_path / "work" / "data" / "synth" / "classes.csv"
    assert s.run_dir("0123456789abcdef") == tmp_path / "work" / "runs" / "synth-01234567"
    assert qs.generate_kwargs(s)["prompt"] == "my.toml"


def test_plan_request_and_replan_sends_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _settings(tmp_path, QUICKSTART_HOME="work", QUICKSTART_CACHE="cache.db")
    _write_classes(s)
    s.report.mkdir(parents=True)
    plan = qs.plan_descriptions(s)
    assert plan.to_request == CLASSES and len(plan.set_id) == 16
    assert "2 to request (dry run, nothing written)" in plan.text
    assert not s.cache.exists()  # the plan writes nothing

    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-be-sent")
    ui, out = _ui()
    with FakeOpenAI(api_key="EMPTY") as fake:  # the placeholder key a local server gets
        summary = qs.request_descriptions(s, ui, fake.url)
        assert summary.complete and summary.set_id == plan.set_id
        again = qs.plan_descriptions(s)
        assert again.set_id == plan.set_id and again.to_request == []
        assert fake.count() == len(CLASSES)
    assert "sk-must-not-be-sent" == __import__("os").environ["OPENAI_API_KEY"]  # restored
    assert "LLM requests answered by the server: 0" in out.getvalue()  # no server log here

    qs.export_descriptions(s, ui, plan.set_id, len(CLASSES))
    exported = json.loads((s.report / "descriptions.json").read_text())
    assert [c["name"] for c in exported["classes"]] == CLASSES
    assert f"  {CLASSES[0]}:" in out.getvalue()


def test_plan_reports_bad_input(tmp_path: Path) -> None:
    s = _settings(tmp_path, QUICKSTART_HOME="work", QUICKSTART_PROMPT="no-such-prompt")
    _write_classes(s)
    with pytest.raises(qs.QuickstartError, match="descgen generate --dry-run failed"):
        qs.plan_descriptions(s)


def test_helpers(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text('INFO "POST /v1/chat/completions HTTP/1.1" 200\nINFO "GET /v1/models HTTP/1.1" 200\n' * 3)
    assert qs.count_requests(log) == 3
    assert qs.count_requests(tmp_path / "missing.log") == 0
    assert qs.cli_options({"max_invalid": 8, "timeout": 300.0}) == ["--max-invalid", 8, "--timeout", 300.0]
    assert qs.accuracy_text({"top1": 0.5, "top5": 1.0}, 4) == "top-1 50.0 %, top-5 100.0 % (chance 25.0 %)"
    assert qs.Interrupted(signal.SIGINT).exit_code == 130
    assert qs.Interrupted(signal.SIGTERM).exit_code == 143


def test_summary_points_at_everything(tmp_path: Path) -> None:
    s = _settings(tmp_path, QUICKSTART_HOME="work")
    _write_classes(s)
    (s.data / "val.txt").write_text("val/0001.mp4 0\n")
    run = s.run_dir("abcdef0123456789")
    run.mkdir(parents=True)
    for name in ("training_curve.png", "confusion_last.png"):
        (run / name).write_bytes(b"")
    ui, _ = _ui()
    text = qs.summary_text(s, ui, "abcdef0123456789", "top-1 90.0 %")
    assert str(run / "training_curve.png") in text and str(run / "confusion_last.png") in text
    assert f'--class "{CLASSES[0]}"' in text and str(s.data / "val/0001.mp4") in text
    assert "(top-1 90.0 %)" in text and str(s.server_log) in text


def test_missing_environment_is_reported(tmp_path: Path) -> None:
    s = qs.Settings.from_env({"QUICKSTART_HOME": "w"}, cwd=tmp_path, repo=tmp_path)
    ui, _ = _ui()
    with pytest.raises(qs.QuickstartError, match="run bash scripts/setup.sh"):
        qs.check_environments(s, ui)


# ---------------------------------------------------------------------------- descgen serve


def test_serve_help_and_bad_arguments(descgen_cli) -> None:
    shown = descgen_cli("serve", "--help")
    assert shown.returncode == 0, shown.stderr
    for option in (
        "--python",
        "--model",
        "--port",
        "--served-model-name",
        "--timeout",
        "--log",
        "--ready-file",
    ):
        assert option in shown.stdout
    missing = descgen_cli("serve", "--model", "m")
    assert missing.returncode == 2 and "--python" in missing.stderr
    bad_port = descgen_cli("serve", "--python", sys.executable, "--model", "m", "--port", "eighty")
    assert bad_port.returncode == 2 and "--port" in bad_port.stderr


def test_server_errors_are_user_errors() -> None:
    assert issubclass(ServerError, DescgenError) and ServerError("x").exit_code == 1


class _FakeHandle:
    base_url = "http://127.0.0.1:5/v1"

    def __init__(self) -> None:
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


def test_serve_passes_vllm_options_on_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, descgen_cli
) -> None:
    from descgen import serve

    seen: dict = {}
    handle = _FakeHandle()
    ready = tmp_path / "url"

    def fake_start(python, model, **kwargs):
        seen.update(python=python, model=model, **kwargs)
        return handle

    def fake_watch(h) -> None:
        seen["ready"] = ready.read_text()

    monkeypatch.setattr(serve, "start_server", fake_start)
    monkeypatch.setattr(serve, "watch", fake_watch)
    before = signal.getsignal(signal.SIGINT)
    args = ["serve", "--python", "py", "--model", "m", "--port", "8123", "--ready-file", str(ready)]
    result = descgen_cli(*args, "--max-model-len", "2048", "--enforce-eager")
    assert result.returncode == 0, result.output
    assert result.output.strip() == handle.base_url
    assert seen["extra_args"] == ["--max-model-len", "2048", "--enforce-eager"]
    assert (seen["python"], seen["model"], seen["port"]) == ("py", "m", 8123)
    assert seen["ready"] == handle.base_url + "\n" and not ready.exists()
    assert handle.stopped
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_while_requests_are_in_flight_unwinds(tmp_path: Path) -> None:
    """SIGINT during generation reaches the pipeline as Interrupted (so the server gets stopped)."""
    import os
    import threading

    s = _settings(tmp_path, QUICKSTART_HOME="work", QUICKSTART_CACHE="cache.db")
    _write_classes(s)
    ui, _ = _ui()
    previous = {sig: signal.getsignal(sig) for sig in qs.SIGNALS}
    try:
        for sig in qs.SIGNALS:
            signal.signal(sig, qs._on_signal)
        with FakeOpenAI(api_key="EMPTY", default="hang", hang_s=30) as fake:
            threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
            with pytest.raises(qs.Interrupted) as info:
                qs.request_descriptions(s, ui, fake.url)
        assert info.value.exit_code == 130
        # Further signals are ignored while the clean-up runs.
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_library_errors_end_in_one_line() -> None:
    from descgen.store import StoreError
    from msta.config import ConfigError

    for error in (ConfigError("bad key"), StoreError("bad key")):
        with pytest.raises(qs.QuickstartError, match="^msta train failed: bad key$"):
            with qs.failing_as("msta train"):
                raise error
    with pytest.raises(RuntimeError):  # a bug is not a user error: it keeps its traceback
        with qs.failing_as("msta train"):
            raise RuntimeError("bug")
