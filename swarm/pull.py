"""Pull a published adapter version from a coordinator: verified, resumable, cached, and in the layout you need.

A pull first fetches the version's signed manifest and checks it: the signature over its exact bytes, every
field and file name (``swarm.manifest``), and that the signer is the coordinator you trust (``trusted_signer``,
or the key this address used the first time you pulled from it, kept in ``~/.config/nomoat/known_coordinators.json``
like ssh's known_hosts, and pinned only once a manifest and all its files verified; see
``swarm.known_coordinators``). A "latest" older than a version already seen from that signer is refused as a
downgrade. Files then stream in chunks into a cache folder named by the version's digest, resuming from what an
interrupted pull left, and every file must match the manifest's size and sha256 before anything reaches ``out``;
pulling a version that is already cached (or already in ``out``) downloads nothing. ``out`` never loses a file
the pull did not write (``swarm.output_folder``; ``force`` to write into a folder of your own).

Layouts:
- ``adapter`` (default): ``out`` is the version's stock PEFT adapter (``PeftModel.from_pretrained(base, out)``;
  for a stacked version, ``base`` means the base with its parent chain merged in, see ``chain``);
- ``chain``: ``out/00-<run>-v<N>/ ...`` holds every adapter of the stack, root first, and ``out/stack.json``
  lists them; apply them in order;
- ``merged``: ``out`` is a plain transformers model with the whole chain merged in (``merge_and_unload``),
  plus the tokenizer, for tools that know nothing of PEFT; ``out/nomoat_adapter/`` keeps the verified version.

Usage::

    import swarm  # swarm.pull(...) is this module's pull(...)
    pulled = swarm.pull("127.0.0.1:50051", "demo", out=Path("adapter"))           # latest version
    pulled = swarm.pull("127.0.0.1:50051", "demo", out=Path("merged"), version=3, layout="merged")
    model = peft.PeftModel.from_pretrained(base_model, "adapter")
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from tqdm import tqdm

from swarm.client import CoordinatorClient, Endpoint
from swarm.known_coordinators import CoordinatorMemory, CoordinatorMemoryError
from swarm.manifest import (MANIFEST_FILE, SIGNATURE_FILE, FileMismatchError, Manifest, ManifestError, SignedManifest,
                            read_signed_manifest, verify_files)
from swarm.merge import MERGED_ADAPTER_FOLDER, MergeError, write_merged_model
from swarm.output_folder import OutputFolderError, check_output_folder, write_output_folder
from swarm.paths import UserDirs

VERSION_INFO_FILE = "nomoat_version.json"
STACK_FILE = "stack.json"
Layout = Literal["adapter", "chain", "merged"]


class PullError(RuntimeError):
    """The version could not be pulled or did not verify; nothing was written to the output folder."""


@dataclass(frozen=True)
class PulledVersion:
    run_name: str
    version: int
    sha256: str
    eval_loss: float
    base_eval_loss: float
    path: Path
    manifest: Manifest
    downloaded_bytes: int  # over the network by this call (0: everything came from the cache or was in place)
    layout: str = "adapter"


def resolve_version(text: str | int | None) -> int:
    """'latest', None or 0 -> 0 (latest); 'N' or N -> N; PullError otherwise."""
    if text in (None, "", "latest", 0):
        return 0
    try:
        number = int(text)
    except (TypeError, ValueError):
        raise PullError(f"--version must be 'latest' or a version number, not {text!r}") from None
    if number < 1:
        raise PullError(f"version numbers start at 1, got {number}")
    return number


def pull(coordinator: str | Endpoint, run_name: str, out: Path, version: int | str = 0, *,
         layout: Layout = "adapter", trusted_signer: str | None = None, cache_dir: Path | None = None,
         chunk_bytes: int = 0, show_progress: bool = False, on_bytes: Callable[[int], None] | None = None,
         user_dirs: UserDirs | None = None, force: bool = False) -> PulledVersion:
    """Pull ``version`` ('latest'/0 or N) of ``run_name`` into ``out`` in the given layout, verified.

    ``user_dirs`` holds the trusted coordinator keys and the cache (None: ``UserDirs.from_environment()``);
    ``cache_dir`` overrides its cache. ``on_bytes`` is called with each received chunk's size (progress
    reporting; raising from it interrupts the pull, and the next pull resumes where it stopped).

    ``out`` is written by ``swarm.output_folder``'s rules: a non-empty folder that is not an earlier pull or
    export is refused (before anything is downloaded) unless ``force``, and no file the pull did not write is
    ever removed."""
    if layout not in ("adapter", "chain", "merged"):
        raise PullError(f"layout must be adapter, chain or merged, not {layout!r}")
    number = resolve_version(version)
    out = Path(out).expanduser()
    dirs = user_dirs or UserDirs.from_environment()
    fetcher = _Fetcher(coordinator, Path(cache_dir or dirs.adapter_cache).expanduser(), _memory(dirs),
                       trusted_signer, chunk_bytes, show_progress, on_bytes)
    try:
        check_output_folder(out, force=force)  # before downloading anything
        manifest, folders = fetcher.fetch_stack(run_name, number)
        if layout == "adapter":
            _install_adapter(manifest, folders[-1], out, force)
        elif layout == "chain":
            _install_chain(folders, out, force)
        else:
            _install_merged(manifest, folders, out, force)
    except OutputFolderError as exc:
        raise PullError(str(exc)) from None
    return PulledVersion(manifest.run, manifest.version, manifest.sha256, manifest.eval_loss, manifest.base_eval_loss,
                         out, manifest, fetcher.downloaded, layout)


def fetch_stack(coordinator: str | Endpoint, run_name: str, version: int | str = 0, *,
                trusted_signer: str | None = None, cache_dir: Path | None = None,
                user_dirs: UserDirs | None = None) -> tuple[Manifest, list[Path]]:
    """A version and every version it is stacked on, verified into the cache: (its manifest, cached adapter
    folders root first, ending with its own). Workers of a stacked run merge these into their base model.
    ``user_dirs`` and ``cache_dir`` as for ``pull``."""
    dirs = user_dirs or UserDirs.from_environment()
    fetcher = _Fetcher(coordinator, Path(cache_dir or dirs.adapter_cache).expanduser(), _memory(dirs),
                       trusted_signer, 0, False, None)
    return fetcher.fetch_stack(run_name, resolve_version(version))


def _self_consistent(signed: SignedManifest) -> bool:
    """Whether the manifest verifies against its own key (so only the key's trust failed)."""
    try:
        signed.verify(None)
    except ManifestError:
        return False
    return True


def _memory(dirs: UserDirs) -> CoordinatorMemory:
    return CoordinatorMemory(dirs.known_coordinators, dirs.seen_versions)


class _Fetcher:
    """Fetches verified versions into the content-addressed cache (``<cache>/<sha256>/``)."""

    def __init__(self, coordinator: str | Endpoint, cache_dir: Path, memory: CoordinatorMemory,
                 trusted_signer: str | None, chunk_bytes: int, show_progress: bool,
                 on_bytes: Callable[[int], None] | None):
        self.endpoint = Endpoint.of(coordinator)  # its credentials (a join token) open private runs
        # the coordinator memory remembers a signing key per address
        self.coordinator, self.cache_dir, self.trusted_signer = self.endpoint.address, cache_dir, trusted_signer
        self.memory = memory
        self.chunk_bytes, self.show_progress, self.on_bytes = chunk_bytes, show_progress, on_bytes
        self.downloaded = 0

    def fetch_stack(self, run_name: str, version: int) -> tuple[Manifest, list[Path]]:
        """The version's manifest and the cached folders of its chain, root first, then its own."""
        with CoordinatorClient(self.endpoint) as client:
            manifest, folder = self.fetch(client, run_name, version)
            stack = [self.fetch(client, link.run, link.version, expect=link.sha256)[1] for link in manifest.chain]
        return manifest, [*stack, folder]

    def verified_manifest(self, payload: bytes, signature_json: str, what: str) -> Manifest:
        if not payload:
            raise PullError(f"{what} has no signed manifest (published by an older coordinator); it cannot be verified")
        pinned, signed = None, None
        try:
            # on first contact (no --trust, nothing pinned) any self-consistent signer is accepted here; it is
            # pinned only by _remember, once its manifest and every file verified
            pinned = None if self.trusted_signer else self.memory.signer_for(self.coordinator)
            signed = SignedManifest.from_parts(payload, signature_json)
            return signed.verify(self.trusted_signer or pinned)
        except ManifestError as exc:
            changed = pinned is not None and signed is not None and _self_consistent(signed)
            advice = self._changed_key_advice(signed.signer) if changed and signed is not None else ""
            raise PullError(f"{what} failed verification: {exc}{advice}") from None
        except CoordinatorMemoryError as exc:
            raise PullError(str(exc)) from None

    def _changed_key_advice(self, signer: str) -> str:
        """What to do when the address signs with another key than the one pinned there."""
        return (f", the key first used at {self.coordinator} (pinned in {self.memory.known_file}). Nothing was "
                f"downloaded. If its operator changed the coordinator's key, confirm the new key {signer} with "
                f"them, then delete the \"{self.coordinator}\" entry from that file (the next pull pins the new "
                f"key) or pull with --trust {signer}; otherwise someone else is answering at this address")

    def _refuse_downgrade(self, manifest: Manifest) -> None:
        """A "latest" below the highest version this signer was seen to publish is an old answer replayed (by
        the server or a proxy in between): refused, naming both versions."""
        try:
            highest = self.memory.highest_version(manifest.coordinator, manifest.run)
        except CoordinatorMemoryError as exc:
            raise PullError(str(exc)) from None
        if manifest.version < highest:
            raise PullError(
                f"{self.coordinator} offers version {manifest.version} of '{manifest.run}' as the latest, but "
                f"version {highest} of it, signed by the same coordinator ({manifest.coordinator}), was verified "
                f"before: refusing a downgrade (a stale or replayed answer, or a proxy in between). To pull "
                f"version {manifest.version} on purpose, ask for it: --version {manifest.version}")

    def _remember(self, manifest: Manifest) -> None:
        try:
            self.memory.remember(self.coordinator, manifest)
        except CoordinatorMemoryError as exc:
            raise PullError(str(exc)) from None

    def fetch(self, client: CoordinatorClient, run_name: str, version: int,
              expect: str | None = None) -> tuple[Manifest, Path]:
        response = client.get_version(run_name, version)
        what = f"version {response.version.version} of '{run_name}'"
        manifest = self.verified_manifest(response.manifest, response.signature_json, what)
        if manifest.run != run_name or (version and manifest.version != version):
            raise PullError(f"{what}: the coordinator sent the manifest of {manifest.run}@{manifest.version}")
        if expect is not None and manifest.sha256 != expect:
            raise PullError(f"{what} hashes to {manifest.sha256}, but the stack names {expect}")
        if any(entry.name == VERSION_INFO_FILE for entry in manifest.files):
            raise PullError(f"{what} lists a file named {VERSION_INFO_FILE}, which pull writes itself")
        if not version:
            self._refuse_downgrade(manifest)
        folder = self.cache_dir / manifest.sha256
        if folder.is_dir() and _holds(folder, manifest):
            self._remember(manifest)
            return manifest, folder
        partial = self.cache_dir / f".partial-{manifest.sha256}"
        partial.mkdir(parents=True, exist_ok=True)
        offsets = _resume_offsets(partial, manifest)
        self._download(client, run_name, manifest, partial, offsets)
        try:
            verify_files(partial, manifest)
        except FileMismatchError as exc:
            (partial / exc.name).unlink(missing_ok=True)  # the next pull fetches this file afresh
            raise PullError(f"{what} failed verification: {exc}") from None
        SignedManifest.from_parts(response.manifest, response.signature_json).write(partial)
        (partial / VERSION_INFO_FILE).write_text(json.dumps(_version_info(manifest), indent=2))
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(partial, folder)
        self._remember(manifest)
        return manifest, folder

    def _download(self, client: CoordinatorClient, run_name: str, manifest: Manifest, partial: Path,
                  offsets: dict[str, int]) -> None:
        expected = {entry.name: entry for entry in manifest.files}
        remaining = sum(entry.size - offsets[entry.name] for entry in manifest.files)
        if remaining == 0:
            return
        progress = tqdm(total=sum(entry.size for entry in manifest.files), initial=sum(offsets.values()),
                        unit="B", unit_scale=True, desc=f"{manifest.run} v{manifest.version}",
                        disable=not self.show_progress)
        handles = {}
        try:
            stream = client.pull_stream(run_name, manifest.version, offsets, self.chunk_bytes)
            for message in stream:
                if message.HasField("header"):
                    if message.header.version.sha256 != manifest.sha256:
                        raise PullError(f"the coordinator streamed {message.header.version.sha256}, "
                                        f"not the version whose manifest it signed ({manifest.sha256})")
                    continue
                chunk = message.chunk
                entry = expected.get(chunk.name)
                if entry is None:
                    raise PullError(f"coordinator sent a chunk of {chunk.name!r}, which the manifest does not list")
                if chunk.offset != offsets[chunk.name] or chunk.offset + len(chunk.data) > entry.size:
                    raise PullError(f"{chunk.name}: chunk at offset {chunk.offset} does not continue the "
                                    f"{offsets[chunk.name]} bytes held (file size {entry.size})")
                if chunk.name not in handles:
                    handles[chunk.name] = (partial / chunk.name).open("ab")
                handles[chunk.name].write(chunk.data)
                handles[chunk.name].flush()
                offsets[chunk.name] += len(chunk.data)
                self.downloaded += len(chunk.data)
                progress.update(len(chunk.data))
                if self.on_bytes is not None:
                    self.on_bytes(len(chunk.data))
        finally:
            for handle in handles.values():
                handle.close()
            progress.close()
        short = [f"{name} ({offsets[name]} of {entry.size} bytes)" for name, entry in expected.items()
                 if offsets[name] != entry.size]
        if short:
            raise PullError("the download ended early: " + ", ".join(short) + "; pull again to resume")


def _resume_offsets(partial: Path, manifest: Manifest) -> dict[str, int]:
    """Bytes already held of each file; a file longer than the manifest says is dropped (it cannot be right)."""
    offsets = {}
    for entry in manifest.files:
        path = partial / entry.name
        size = path.stat().st_size if path.is_file() else 0
        if size > entry.size:
            path.unlink()
            size = 0
        offsets[entry.name] = size
    return offsets


def _holds(folder: Path, manifest: Manifest) -> bool:
    """``folder`` holds exactly this version: its signed manifest and files matching it."""
    try:
        if read_signed_manifest(folder).payload != manifest.to_bytes():
            return False
        verify_files(folder, manifest)
    except ManifestError:
        return False
    return True


def _version_info(manifest: Manifest) -> dict:
    return {"run": manifest.run, "version": manifest.version, "sha256": manifest.sha256, "epoch": manifest.epoch,
            "samples": manifest.samples, "eval_loss": manifest.eval_loss, "base_eval_loss": manifest.base_eval_loss,
            "contributors": list(manifest.contributors), "created_at": manifest.created_at,
            "chain": [str(link) for link in manifest.chain], "base_model": manifest.base_model}


def _copy_version(folder: Path, manifest: Manifest, target: Path) -> None:
    """Copy the files ``manifest`` lists, its signed manifest and the version summary: nothing else."""
    target.mkdir(parents=True, exist_ok=True)
    for name in [entry.name for entry in manifest.files] + [MANIFEST_FILE, SIGNATURE_FILE, VERSION_INFO_FILE]:
        shutil.copyfile(folder / name, target / name)


def _install_adapter(manifest: Manifest, folder: Path, out: Path, force: bool) -> None:
    if out.is_dir() and _holds(out, manifest):
        return  # already there, verified
    write_output_folder(out, lambda staging: _copy_version(folder, manifest, staging), force=force)


def _stack_entries(folders: list[Path]) -> list[tuple[str, Path, Manifest]]:
    entries = []
    for index, folder in enumerate(folders):
        manifest = Manifest.from_bytes(read_signed_manifest(folder).payload)
        entries.append((f"{index:02d}-{manifest.run}-v{manifest.version}", folder, manifest))
    return entries


def _install_chain(folders: list[Path], out: Path, force: bool) -> None:
    entries = _stack_entries(folders)

    def fill(staging: Path) -> None:
        for name, folder, manifest in entries:
            _copy_version(folder, manifest, staging / name)
        top = entries[-1][2]
        (staging / STACK_FILE).write_text(json.dumps({
            "base_model": top.base_model, "base_model_fingerprint": top.base_model_fingerprint,
            "apply_in_order": [{"folder": name, "run": m.run, "version": m.version, "sha256": m.sha256}
                               for name, _, m in entries],
        }, indent=2))

    write_output_folder(out, fill, force=force)


def _install_merged(manifest: Manifest, folders: list[Path], out: Path, force: bool) -> None:
    def fill(staging: Path) -> None:
        try:
            write_merged_model(staging, manifest.base_model, manifest.base_model_fingerprint, folders)
        except MergeError as exc:
            raise PullError(f"cannot merge {manifest.run}@{manifest.version} into {manifest.base_model}: "
                            f"{exc}") from None
        # the verified adapter and its signed manifest travel along; at the top level the manifest would list
        # files that are not there, and adapter_config.json would make tools treat the folder as an adapter
        _copy_version(folders[-1], manifest, staging / MERGED_ADAPTER_FOLDER)

    write_output_folder(out, fill, force=force)



class _CallableModule(types.ModuleType):
    """``swarm.pull`` names both this module and the Python API: calling the module calls ``pull``. (Importing a
    submodule sets it as the package's attribute, so a function there would be replaced by whoever imports first.)"""

    def __call__(self, *args, **kwargs) -> PulledVersion:
        return pull(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
