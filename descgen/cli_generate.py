"""Command functions: ``generate``, ``datasets`` and ``prompts list|show|diff`` (registered by descgen.cli)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from descgen import cli_options as shared
from descgen.errors import DescgenError

_O = typer.Option
DatasetOpt = _O(
    None, "--dataset", help="Built-in dataset (k400 k600 hmdb51 ucf101 ssv2), or the name of --classes."
)
PromptOpt = _O(
    None, "--prompt", help="Shipped prompt name or path to a .toml prompt file (default msta-general-v1)."
)
NOpt = _O(2, "--n", help="Spatial and temporal phrases per class.")
BackendOpt = _O("openai", "--backend", help="openai (hosted or any compatible server) or vllm (in-process).")
ModelOpt = _O(None, "--model", help="Model name (openai: default gpt-4o-mini; vllm: required).")
TemperatureOpt = _O(None, "--temperature", help="Override the prompt's temperature.")
SeedOpt = _O(None, "--seed", help="Override the prompt's seed.")
MaxTokensOpt = _O(None, "--max-tokens", help="Override the prompt's max tokens.")
ForceOpt = _O(False, "--force", help="Request every class again and replace its descriptions.")
DryRunOpt = _O(False, "--dry-run", help="Print the plan and write nothing.")
JsonOpt = _O(False, "--json", help="With --dry-run: print the plan as one JSON object.")
VllmOpt = _O(None, "--vllm-opt", help="KEY=VALUE passed to the vllm engine (repeatable).")
BatchOpt = _O(
    False, "--batch", help="Submit the missing requests to the Batch API (half price, within 24 h)."
)
WaitOpt = _O(False, "--wait", help="With --batch: poll until the batches finish, then collect them.")
BatchFileOpt = _O(
    None, "--batch-file", help="Write the missing requests as a JSONL batch file (for vLLM's run_batch)."
)


def generate(
    dataset: str | None = DatasetOpt,
    classes: Path | None = shared.ClassesOpt,
    data_dir: Path | None = shared.DataDirOpt,
    cache: Path = shared.CacheOpt,
    prompt: str | None = PromptOpt,
    n: int = NOpt,
    backend: str = BackendOpt,
    model: str | None = ModelOpt,
    base_url: str | None = shared.BaseUrlOpt,
    temperature: float | None = TemperatureOpt,
    seed: int | None = SeedOpt,
    max_tokens: int | None = MaxTokensOpt,
    concurrency: int = shared.ConcurrencyOpt,
    timeout: float = shared.TimeoutOpt,
    max_attempts: int = shared.MaxAttemptsOpt,
    max_invalid: int = shared.MaxInvalidOpt,
    force: bool = ForceOpt,
    dry_run: bool = DryRunOpt,
    as_json: bool = JsonOpt,
    vllm_opt: list[str] | None = VllmOpt,
    batch: bool = BatchOpt,
    wait: bool = WaitOpt,
    batch_file: Path | None = BatchFileOpt,
) -> None:
    """Write N spatial and N temporal descriptions per class into the cache (re-runs cost nothing)."""
    from descgen.generate import Summary, run_plan
    from descgen.plan import parse_options, plan

    vllm_options = parse_options(vllm_opt)
    if as_json and not dry_run:
        raise DescgenError("--json needs --dry-run (it prints the plan)")
    if wait and not batch:
        raise DescgenError("--wait needs --batch")
    if batch and batch_file is not None:
        raise DescgenError("--batch and --batch-file exclude each other")
    p = plan(
        dataset=dataset,
        classes_file=classes,
        data_dir=data_dir,
        cache=cache,
        prompt=prompt,
        n=n,
        backend=backend,
        model=model,
        temperature=temperature,
        seed=seed,
        max_tokens=max_tokens,
        max_invalid=max_invalid,
        force=force,
    )
    if dry_run:
        _dry_run(p, as_json, Summary.of(p, dry_run=True).line())
        return
    options = dict(base_url=base_url, concurrency=concurrency, timeout=timeout, max_attempts=max_attempts)
    if batch or batch_file is not None:
        _batch(p, options, wait, batch_file)
        return
    summary = run_plan(p, {**options, "vllm_options": vllm_options}, progress=True, out=sys.stderr)
    typer.echo(summary.line())
    raise typer.Exit(summary.exit_code)


def _dry_run(p, as_json: bool, summary_line: str) -> None:
    """Print the plan with its token and cost estimate."""
    import json

    from descgen.batch import estimate, estimate_lines

    est = estimate(p)
    if as_json:
        typer.echo(json.dumps({**p.to_dict(), "estimate": est}, sort_keys=True, ensure_ascii=False))
    else:
        typer.echo("\n".join([*p.text_lines(), *estimate_lines(est), summary_line]))


def _batch(p, options: dict, wait: bool, batch_file: Path | None) -> None:
    """``--batch`` (submit, and with --wait collect) or ``--batch-file`` (write the file)."""
    from descgen.batch import generate_batch, generate_batch_file

    if batch_file is not None:
        batch_id, count = generate_batch_file(p, batch_file)
        where = f"batch {batch_id}" if count else "nothing to request"
        typer.echo(f"{p.classes.name}: {count} requests written to {batch_file} ({where}); after "
                   f"`python -m vllm.entrypoints.openai.run_batch -i {batch_file} -o OUT --model {p.model}` "
                   f"run `descgen batch collect --cache {p.cache} --file OUT`")  # fmt: skip
        return
    ids, summary = generate_batch(p, options, wait=wait, out=sys.stderr)
    typer.echo(f"{p.classes.name}: {len(ids)} batches submitted ({', '.join(ids) or 'nothing to request'})")
    if summary is not None:
        typer.echo(summary.line())
        raise typer.Exit(summary.exit_code)


def datasets_cmd(
    data_dir: Path | None = shared.DataDirOpt,
) -> None:
    """List the built-in datasets and whether each is found in the data directory."""
    from descgen.datasets import ClassListError, builtin_status, load_class_list, resolve_data_dir

    typer.echo(f"data directory: {resolve_data_dir(data_dir)}")
    for row in builtin_status(data_dir):
        if row["found"]:
            try:
                count = f"{len(load_class_list(row['name'], data_dir=data_dir))} classes"
            except ClassListError as exc:
                count = f"unusable: {exc}"
        else:
            count = f"not found ({row['path']})"
        typer.echo(f"{row['name']:<8} {count:<14} {row['description']}")


def prompts_list() -> None:
    """List the shipped prompt files."""
    from descgen.prompts import list_prompts

    for p in list_prompts():
        typer.echo(f"{Path(p.source).stem:<20} {p.fingerprint[:12]}  {p.description}")


def prompts_show(
    name: str = typer.Argument(
        ..., help="Prompt name, file stem, path to a .toml file, or (with --cache) a fingerprint."
    ),
    cache: Path | None = typer.Option(
        None, "--cache", help="Also look the prompt up by fingerprint prefix in this cache."
    ),
) -> None:
    """Show a prompt's canonical content and fingerprint."""
    from descgen.prompts import PromptError, load_prompt

    try:
        p = load_prompt(name)
    except PromptError as exc:
        if cache is None:
            raise
        p = _stored_prompt(cache, name, exc)
    typer.echo(f"# {p.label}  sha256 {p.fingerprint}")
    typer.echo(f"# source {p.source}")
    typer.echo(p.text, nl=False)


def _stored_prompt(cache: Path, prefix: str, not_found: Exception):
    """The prompt stored in ``cache`` whose fingerprint starts with ``prefix`` (exactly one)."""
    from descgen.prompts import PromptError, prompt_from_content
    from descgen.store import Store

    with Store(cache, create=False) as store:
        rows = [r for r in store.list_prompts() if r["fingerprint"].startswith(prefix.lower())]
    if len(rows) != 1:
        found = "no prompt" if not rows else f"{len(rows)} prompts"
        raise DescgenError(f"{not_found}; {found} in {cache} with a fingerprint starting {prefix!r}")
    try:
        return prompt_from_content(rows[0]["content"], source=f"{cache} (stored)")
    except (PromptError, ValueError) as err:
        raise DescgenError(f"the prompt stored in {cache} cannot be read: {err}") from None


def prompts_diff(
    a: str = typer.Argument(..., help="First prompt (name, stem or path)."),
    b: str = typer.Argument(..., help="Second prompt (name, stem or path)."),
    cache: Path | None = typer.Option(
        None, "--cache", help="Also count the classes each version produced in this cache."
    ),
) -> None:
    """Unified diff of two prompt versions (and, with --cache, what each produced)."""
    from descgen.prompts import diff_prompts, load_prompt
    from descgen.store import Store

    pa, pb = load_prompt(a), load_prompt(b)
    text = diff_prompts(pa, pb)
    typer.echo(
        text if text else f"{pa.label} and {pb.label} have the same content ({pa.fingerprint[:12]})",
        nl=not text,
    )
    if cache is None:
        return
    with Store(cache, create=False) as store:
        for p in (pa, pb):
            sets = store.list_sets(prompt_fp_prefix=p.fingerprint)
            total = 0
            lines = []
            for s in sets:
                done = len(store.completed_classes(s.id))
                total += done
                lines.append(
                    f"    {s.dataset:<10} {s.backend}:{s.model} N={s.n}  {done} classes  (set {s.id})"
                )
            typer.echo(f"{p.label}: {total} classes with descriptions in {len(sets)} sets in {cache}")
            for line in lines:
                typer.echo(line)
