"""Start and stop a local vLLM OpenAI-compatible server in a subprocess.

The server runs from any Python interpreter that has vLLM installed (for example the CPU
environment made by ``scripts/setup_vllm_cpu.sh``), in its own process group on the loopback
interface. :func:`start_server` waits until the server answers ``/v1/models``;
:meth:`ServerHandle.stop` ends the whole process group and checks that the port is free again.
Servers still running when the interpreter exits, or when it receives SIGTERM or SIGHUP, are
stopped as well.

The command line ``descgen serve`` (:mod:`descgen.cli_serve`) runs one server until it is
interrupted; the quickstart uses :func:`start_server` directly.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from subprocess import DEVNULL, Popen

from descgen.errors import DescgenError

HOST = "127.0.0.1"
DEFAULT_START_TIMEOUT_S = 900.0
DEFAULT_STOP_TIMEOUT_S = 30.0

# Environment defaults for the server process. The CPU engine otherwise reserves most of the
# machine's memory up front (and refuses to start when that much is not free); one GiB of KV
# cache is plenty for the small models and short prompts used here. No model hub is reachable.
DEFAULT_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


class ServerError(DescgenError):
    """The server could not be started or stopped cleanly. The message includes its log tail."""

    exit_code = 1


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def log_tail(path: Path, max_lines: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-max_lines:])


def set_parent_death_signal() -> None:
    """In the child: receive SIGTERM if the parent dies, so a killed parent leaves no server."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except Exception:  # not Linux, or no libc: the atexit and signal handlers still apply
        pass


class ServerHandle:
    """A running vLLM server. Use as a context manager, or call :meth:`stop`."""

    def __init__(
        self,
        process: Popen,
        port: int,
        model_name: str,
        log_path: Path,
        owns_log: bool,
    ) -> None:
        self.process = process
        self.pid = process.pid
        self.pgid = process.pid  # started with a new session: the leader's pid is the group id
        self.port = port
        self.model_name = model_name
        self.log_path = log_path
        self._owns_log = owns_log
        self._stopped = False
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API root, e.g. ``http://127.0.0.1:8000/v1``."""
        return f"http://{HOST}:{self.port}/v1"

    def running(self) -> bool:
        return self.process.poll() is None

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Terminate the server's whole process group, wait for it, and check the port is free.

        SIGTERM first (vLLM shuts its engine processes down on it); SIGKILL for whatever is still
        there after ``timeout`` seconds. Safe to call more than once.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        _LIVE.discard(self)
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (self.process.poll() is None or self._group_alive()):
            time.sleep(0.1)
        if self.process.poll() is None or self._group_alive():
            self._signal_group(signal.SIGKILL)
            with contextlib.suppress(Exception):
                self.process.wait(timeout=10)
            # Members of the group that are now orphans are reaped by init; give it a moment.
            kill_deadline = time.monotonic() + 10
            while self._group_alive() and time.monotonic() < kill_deadline:
                time.sleep(0.1)
        if self.process.poll() is None:
            with contextlib.suppress(Exception):
                self.process.wait(timeout=5)
        port_deadline = time.monotonic() + 15
        while not port_is_free(self.port):
            if time.monotonic() > port_deadline:
                raise ServerError(f"vLLM server stopped but port {self.port} is still in use")
            time.sleep(0.2)
        if self._owns_log:
            # Keep the log of a server that failed; drop the one of a server that ran fine.
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ServerHandle(pid={self.pid}, base_url={self.base_url!r}, model={self.model_name!r})"


# Servers started by this process and not yet stopped; stopped at exit and on SIGTERM/SIGHUP.
_LIVE: set[ServerHandle] = set()
_HANDLERS_INSTALLED = False


def stop_all() -> None:
    for handle in list(_LIVE):
        with contextlib.suppress(Exception):
            handle.stop(timeout=10)


def _on_signal(signum: int, frame: object) -> None:
    stop_all()
    previous = _PREVIOUS_HANDLERS.get(signum)
    if callable(previous):
        previous(signum, frame)
        return
    # Default action: terminate with the conventional status.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


_PREVIOUS_HANDLERS: dict[int, object] = {}


def _install_handlers() -> None:
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    _HANDLERS_INSTALLED = True
    atexit.register(stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(sig)
        if previous in (signal.SIG_IGN,):
            continue
        _PREVIOUS_HANDLERS[sig] = previous if previous is not signal.SIG_DFL else None
        signal.signal(sig, _on_signal)


# Compact JSON only under structured outputs: otherwise a small model can emit whitespace between
# JSON tokens until it runs out of tokens.
STRUCTURED_OUTPUTS_CONFIG = '{"backend": "xgrammar", "disable_any_whitespace": true}'


def default_args(extra_args: list[str]) -> list[str]:
    """Server arguments descgen relies on, unless the caller chose otherwise."""
    if any(arg.startswith("--structured-outputs-config") for arg in extra_args):
        return []
    return ["--structured-outputs-config", STRUCTURED_OUTPUTS_CONFIG]


def is_cpu_build(python: str) -> bool:
    """Whether the interpreter's vLLM is the CPU build (the ``vllm-cpu`` distribution)."""
    import subprocess

    probe = "import importlib.metadata as m; m.version('vllm-cpu')"
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def cpu_default_args(extra_args: list[str]) -> list[str]:
    """Arguments the CPU engine needs unless the caller chose otherwise.

    The CPU engine fails on a seeded request whose prompt was split across scheduler steps
    ("CPU Generator does not use offset"), so whole prompts only are scheduled.
    """
    if any("chunked-prefill" in arg for arg in extra_args):
        return []
    return ["--no-enable-chunked-prefill"]


def _models_ready(base_url: str) -> bool:
    import urllib.request  # here: loading it (with http, ssl, email) would cost every descgen command

    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _child_env(env: Mapping[str, str] | None) -> dict[str, str]:
    child_env = dict(os.environ)
    for key, value in DEFAULT_ENV.items():
        child_env.setdefault(key, value)
    if env:
        child_env.update(env)
    return child_env


def _log_file(log_path: str | os.PathLike[str] | None) -> tuple[Path, bool]:
    """(the log file, whether it is a temporary file owned by the handle)."""
    if log_path is None:
        fd, tmp = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
        os.close(fd)
        return Path(tmp), True
    log = Path(log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    return log, False


def server_command(
    python: str, model_path: str, name: str, port: int, extra_args: Iterable[str]
) -> list[str]:
    """The vLLM OpenAI-compatible server command line, with the defaults descgen relies on."""
    extra = list(extra_args)
    extra += default_args(extra)
    if is_cpu_build(python):
        extra += cpu_default_args(extra)
    return [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_path,
        "--served-model-name",
        name,
        "--host",
        HOST,
        "--port",
        str(port),
        *extra,
    ]


def _wait_ready(handle: ServerHandle, cmd: list[str], timeout: float) -> None:
    """Wait until the server answers ``/v1/models``; raise ServerError when it exits or times out."""
    process, log = handle.process, handle.log_path
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise ServerError(
                f"vLLM server exited with status {process.returncode} before it was ready "
                f"(command: {' '.join(cmd)}; log: {log}):\n{log_tail(log)}"
            )
        if _models_ready(handle.base_url):
            return
        if time.monotonic() > deadline:
            raise ServerError(
                f"vLLM server did not answer {handle.base_url}/models within {timeout:.0f} s "
                f"(log: {log}):\n{log_tail(log)}"
            )
        time.sleep(0.5)


def start_server(
    python: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    port: int | None = None,
    extra_args: Iterable[str] = (),
    *,
    served_model_name: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_START_TIMEOUT_S,
    log_path: str | os.PathLike[str] | None = None,
) -> ServerHandle:
    """Start ``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1 and wait until it serves.

    ``python`` is an interpreter with vLLM installed. ``served_model_name`` is the name clients
    send as ``model`` (default: ``model_path`` as given). ``env`` adds to (and overrides) the
    current environment and :data:`DEFAULT_ENV`. The server's output goes to ``log_path`` (a
    temporary file by default); when it fails to start, the error carries the log's tail.
    """
    python = str(python)
    if not Path(python).exists() and os.sep in python:
        raise ServerError(f"Python interpreter not found: {python}")
    port = free_port() if port is None else int(port)
    if not port_is_free(port):
        raise ServerError(f"port {port} on {HOST} is already in use")
    name = served_model_name or str(model_path)
    log, owns_log = _log_file(log_path)
    cmd = server_command(python, str(model_path), name, port, extra_args)
    _install_handlers()
    with open(log, "ab") as log_file:
        process = Popen(
            cmd,
            stdin=DEVNULL,
            stdout=log_file,
            stderr=log_file,
            env=_child_env(env),
            start_new_session=True,
            preexec_fn=set_parent_death_signal,
        )
    handle = ServerHandle(process, port, name, log, owns_log)
    _LIVE.add(handle)
    try:
        _wait_ready(handle, cmd, timeout)
    except BaseException:
        handle._owns_log = False  # keep the log for the error message's reader
        with contextlib.suppress(Exception):
            handle.stop(timeout=10)
        raise
    return handle


def watch(handle: ServerHandle, poll_s: float = 0.5) -> None:
    """Block while the server runs and the process that started this one is alive.

    Returns when the parent process is gone (so that a server never outlives whoever asked for
    it); raises ServerError, with the log's tail, when the server exits on its own.
    """
    parent = os.getppid()
    while handle.running():
        if os.getppid() != parent:
            return
        time.sleep(poll_s)
    raise ServerError(
        f"vLLM server exited with status {handle.process.returncode}:\n{log_tail(handle.log_path)}"
    )
