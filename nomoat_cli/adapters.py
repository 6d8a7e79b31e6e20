"""Commands on published adapter versions: ``swarm pull``, ``swarm export`` and ``swarm release``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from nomoat_cli.common import (DEFAULT_COORDINATOR, CaFile, CoordinatorAddress, Fingerprint, Insecure,
                               ask, coordinator_endpoint, fail)
from nomoat_cli.credentials import JoinToken, OperatorTokenFile, with_credentials
from swarm.paths import UserDirs

if TYPE_CHECKING:
    from swarm.client import CoordinatorClient

FORCE = typer.Option(False, "--force", help="Write into a non-empty --out that no pull or export wrote: files "
                     "of the same names are replaced, all others are kept.")


def pull(
    run: str = typer.Option(..., help="Run name."),
    out: Path = typer.Option(..., help="Output folder."),
    coordinator: CoordinatorAddress = DEFAULT_COORDINATOR,
    ca: CaFile = None,
    fingerprint: Fingerprint = None,
    insecure: Insecure = False,
    version: str = typer.Option("latest", help="'latest' or a version number."),
    merge: bool = typer.Option(False, "--merge", help="Write the base model with the adapter (and its parent "
                               "chain) merged in, plus the tokenizer: no PEFT needed to load it."),
    chain: bool = typer.Option(False, "--chain", help="Write every adapter of a stacked version, root first, "
                               "and stack.json listing the order."),
    trust: Optional[str] = typer.Option(None, help="Peer ID of the coordinator key to trust (default: the key "
                                        "this address used on your first pull)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Download cache (default: ~/.cache/nomoat/adapters)."),
    force: bool = FORCE,
    join_token: JoinToken = "",
) -> None:
    """Download a published version, verify its signed manifest and hashes, and write it (resumes and caches).

    \b
    Example:
      swarm pull -c coord.example.org --run myrun --out ./myrun-adapter
    """
    from swarm.client import CoordinatorError
    from swarm.pull import Layout, PullError, pull as run_pull

    if merge and chain:
        fail("choose one of --merge and --chain")
    layout: Layout = "merged" if merge else "chain" if chain else "adapter"
    endpoint = coordinator_endpoint(coordinator, ca, fingerprint, insecure)
    try:
        pulled = run_pull(with_credentials(endpoint, join_token=join_token), run, out, version=version,
                          layout=layout, trusted_signer=trust, cache_dir=cache_dir, show_progress=True,
                          user_dirs=UserDirs.from_environment(), force=force)
    except (CoordinatorError, PullError) as exc:
        fail(str(exc))
    fetched = f"{pulled.downloaded_bytes} bytes downloaded" if pulled.downloaded_bytes else "nothing to download"
    stacked = f", stacked on {' -> '.join(map(str, pulled.manifest.chain))}" if pulled.manifest.chain else ""
    typer.echo(f"pulled {pulled.run_name} version {pulled.version} (sha256 {pulled.sha256[:16]}..., "
               f"eval loss {pulled.eval_loss:.4f} vs base {pulled.base_eval_loss:.4f}{stacked}) into {pulled.path} "
               f"as {layout}; signed by {pulled.manifest.coordinator}; {fetched}")


def release(
    run: str = typer.Option(..., help="Run name."),
    version: str = typer.Option(..., help="A version number, or 'latest' (the run's newest version)."),
    coordinator: CoordinatorAddress = DEFAULT_COORDINATOR,
    ca: CaFile = None,
    fingerprint: Fingerprint = None,
    insecure: Insecure = False,
    undo: bool = typer.Option(False, "--undo", help="Unmark it (retention may then remove it)."),
    operator_token_file: OperatorTokenFile = None,
) -> None:
    """Mark a version as a release: retention keeps it forever (operator).

    \b
    Example:
      swarm release -c coord.example.org --run myrun --version latest
    """
    endpoint = with_credentials(coordinator_endpoint(coordinator, ca, fingerprint, insecure), operator_token_file)

    def mark(client: "CoordinatorClient") -> Any:
        number = latest_version(client, run) if version == "latest" else int(version)
        return client.mark_release(run, number, release=not undo)

    if version != "latest" and not version.isdigit():
        fail(f"--version is a version number or 'latest', not {version!r}")
    info = ask(endpoint, mark)
    typer.echo(f"{run} version {info.version} is {'a release' if info.release else 'no longer a release'}")


def export(
    run: str = typer.Option(..., help="Run name."),
    out: Path = typer.Option(..., help="Folder to write the Hugging Face model repo into."),
    coordinator: CoordinatorAddress = DEFAULT_COORDINATOR,
    ca: CaFile = None,
    fingerprint: Fingerprint = None,
    insecure: Insecure = False,
    version: str = typer.Option("latest", help="'latest' or a version number."),
    merge: bool = typer.Option(False, "--merge", help="Export the merged model instead of the adapter."),
    trust: Optional[str] = typer.Option(None, help="Peer ID of the coordinator key to trust."),
    upload: Optional[str] = typer.Option(None, help="Also upload to this Hub repo id (needs huggingface_hub and "
                                         "a token; optional)."),
    force: bool = FORCE,
    join_token: JoinToken = "",
) -> None:
    """Write a version as a Hugging Face model repo (model card with run, contributors, metrics), ready to upload.

    \b
    Example:
      swarm export -c coord.example.org --run myrun --version latest --out ./hf-repo
    """
    from swarm.client import CoordinatorError
    from swarm.export import ExportError, export_hf_repo, upload_to_hub
    from swarm.output_folder import OutputFolderError, check_output_folder
    from swarm.pull import PullError, fetch_stack

    endpoint = coordinator_endpoint(coordinator, ca, fingerprint, insecure)
    try:
        check_output_folder(out, force=force)
        manifest, stack = fetch_stack(with_credentials(endpoint, join_token=join_token), run, version,
                                      trusted_signer=trust, user_dirs=UserDirs.from_environment())
        folder = export_hf_repo(stack[-1], out, trusted_signer=manifest.coordinator,
                                merged_from=stack[:-1] if merge else None, force=force)
        if upload:
            typer.echo(f"uploaded to {upload_to_hub(folder, upload)}")
    except (CoordinatorError, PullError, ExportError, OutputFolderError) as exc:
        fail(str(exc))
    typer.echo(f"exported {run} version {manifest.version} to {folder}")


def latest_version(client: "CoordinatorClient", run: str) -> int:
    """The number of the run's newest published version; CoordinatorError when it has none."""
    from swarm.client import CoordinatorError

    runs = client.status(run).runs
    numbers = [version.version for state in runs for version in state.versions]
    if not numbers:
        raise CoordinatorError(f"run '{run}' has not published any version")
    return max(numbers)
