"""``descgen serve``: run a local OpenAI-compatible vLLM server until interrupted.

The command function is plain; ``descgen.cli`` registers it with :data:`CONTEXT_SETTINGS`, so
that options it does not know are passed on to vLLM (e.g. ``--max-model-len 2048``).
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import typer

from descgen.fileio import write_text_atomic
from descgen.serve import DEFAULT_START_TIMEOUT_S

CONTEXT_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True}
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Interrupted(BaseException):
    """Raised by the signal handler to unwind and stop the server."""


def _interrupt(signum: int, frame: object) -> None:
    raise _Interrupted(signum)


def serve(
    ctx: typer.Context,
    python: str = typer.Option(..., "--python", help="Interpreter with vLLM installed."),
    model: str = typer.Option(..., "--model", help="Model directory (or a name vLLM can load)."),
    port: int | None = typer.Option(None, "--port", help="Port (default: a free one)."),
    served_model_name: str | None = typer.Option(
        None, "--served-model-name", help="Name clients send as model (default: --model)."
    ),
    timeout: float = typer.Option(DEFAULT_START_TIMEOUT_S, "--timeout", help="Start-up timeout, s."),
    log: Path | None = typer.Option(None, "--log", help="Write the server's output here."),
    ready_file: Path | None = typer.Option(
        None, "--ready-file", help="Write the base URL here once the server is ready."
    ),
) -> None:
    """Run a vLLM OpenAI-compatible server on 127.0.0.1 until interrupted or the caller exits.

    Prints the base URL once the server answers. Other options are passed on to vLLM.
    """
    from descgen.serve import start_server, watch

    previous = {sig: signal.signal(sig, _interrupt) for sig in _SIGNALS}
    handle = None
    try:
        handle = start_server(
            python,
            model,
            port=port,
            extra_args=list(ctx.args),
            served_model_name=served_model_name,
            timeout=timeout,
            log_path=log,
        )
        typer.echo(handle.base_url)
        if ready_file is not None:
            write_text_atomic(ready_file, handle.base_url + "\n")  # pollers never see it half-written
        watch(handle)
    except _Interrupted:
        pass
    finally:
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        if handle is not None:
            handle.stop()
        if ready_file is not None:
            with contextlib.suppress(OSError):
                ready_file.unlink()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
