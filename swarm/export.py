"""Exporting a published version as a Hugging Face model repo folder, ready to upload: the adapter files, the
signed manifest, and a model card (README.md) saying what the version is, who trained it and how to load it.

Nothing is written unless the version checks out: the manifest's signature (and, if given, its signer), then
every file's size and sha256 against the manifest, checked on the copies that will be published.

Usage::

    folder = export_hf_repo(Path("./adapter"), Path("./hf-repo"), trusted_signer="Qm...")
    upload_to_hub(folder, "me/myrun-v3")                         # needs `huggingface_hub` and a token

With ``merged_from`` (the version folders of the parent chain, root first; ``[]`` for a root version) the repo
is a standalone merged model instead (base + chain + this adapter, loadable without PEFT), with the verified
version folder kept under ``nomoat_adapter/``.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import yaml

from swarm.adapter_files import ADAPTER_FILES, FileDigest, file_sha256
from swarm.manifest import MANIFEST_FILE, SIGNATURE_FILE, Manifest, ManifestError, read_signed_manifest, verify_files
from swarm.merge import MERGED_ADAPTER_FOLDER, MergeError, write_merged_model
from swarm.model import TINY_PRESET, ModelLoadError
from swarm.output_folder import OUTPUT_MARKER, OutputFolderError, write_output_folder
from swarm.run_card import contributor_lines, hyperparameter_lines

MODEL_CARD = "README.md"
TAGS = ("nomoat", "lora", "peft")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


class ExportError(ValueError):
    """A version that cannot be exported: unsigned, untrusted, tampered with, or not mergeable."""


def export_hf_repo(
    version_dir: Path,
    out: Path,
    *,
    trusted_signer: str | None = None,
    merged_from: Sequence[Path] | None = None,
    force: bool = False,
) -> Path:
    """Write the version in ``version_dir`` (a pulled or stored version) to ``out`` as a Hugging Face model repo.

    ``trusted_signer``: the coordinator's peer ID; without it any valid self-consistent signature is accepted.
    ``merged_from``: see the module docstring. ``out`` is written only on success, by ``swarm.output_folder``'s
    rules: a non-empty folder that is not an earlier pull or export is refused unless ``force``, and files the
    export did not write are kept.
    """
    version_dir = Path(version_dir)
    if not version_dir.is_dir():
        raise ExportError(f"version folder {version_dir} does not exist")
    if merged_from is None:
        def write(staging: Path) -> None:
            _write_adapter_repo(version_dir, staging, trusted_signer)
    else:
        ancestors = list(merged_from)

        def write(staging: Path) -> None:
            _write_merged_repo(version_dir, staging, trusted_signer, ancestors)
    try:
        return write_output_folder(Path(out), write, force=force, what="swarm export")
    except OutputFolderError as exc:
        raise ExportError(str(exc)) from None


def upload_to_hub(folder: Path, repo_id: str, token: str | None = None, *, private: bool = False) -> str:
    """Create (if needed) the model repo ``repo_id`` on the Hub and upload ``folder`` to it; returns the commit URL."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ExportError("uploading needs huggingface_hub: pip install huggingface_hub") from None
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                               commit_message="Upload nomoat adapter version", ignore_patterns=[OUTPUT_MARKER])
    return str(getattr(commit, "commit_url", commit))


def is_hub_model_id(name: str) -> bool:
    """Whether the run's base model names a Hub repo (not the built-in preset, not a local folder)."""
    if name == TINY_PRESET or ".." in name or Path(name).expanduser().exists():
        return False
    return bool(_HUB_ID.match(name))


def _write_adapter_repo(version_dir: Path, staging: Path, trusted_signer: str | None) -> None:
    manifest = _copy_verified(version_dir, staging, trusted_signer)
    _write_card(staging, manifest, merged=False, extra_files=[])


def _write_merged_repo(version_dir: Path, staging: Path, trusted_signer: str | None,
                       ancestors: list[Path]) -> None:
    adapter_copy = staging / MERGED_ADAPTER_FOLDER
    adapter_copy.mkdir()
    manifest = _copy_verified(version_dir, adapter_copy, trusted_signer)
    signer = trusted_signer or manifest.coordinator
    if len(ancestors) != len(manifest.chain):
        raise ExportError(f"{manifest.run}@{manifest.version} is stacked on {len(manifest.chain)} versions "
                          f"({', '.join(map(str, manifest.chain)) or 'none'}), but merged_from gives {len(ancestors)}")
    for link, ancestor in zip(manifest.chain, ancestors):
        ancestor_manifest = _verify(Path(ancestor), signer)
        if ancestor_manifest.link != link:
            raise ExportError(f"{ancestor} holds {ancestor_manifest.link} ({ancestor_manifest.sha256}), but the "
                              f"chain names {link} ({link.sha256}) at that place")
    try:
        write_merged_model(staging, manifest.base_model, manifest.base_model_fingerprint,
                           [Path(a) for a in ancestors] + [adapter_copy])
    except ModelLoadError as exc:
        raise ExportError(f"cannot load the base model to merge into: {exc}") from None
    except MergeError as exc:
        raise ExportError(str(exc)) from None
    written = sorted(p for p in staging.iterdir() if p.is_file())
    extra = [FileDigest(p.name, p.stat().st_size, file_sha256(p)) for p in written]
    _write_card(staging, manifest, merged=True, extra_files=extra)


def _verify(folder: Path, trusted_signer: str | None) -> Manifest:
    """The folder's manifest, if its signature holds and every file it lists is there with its size and hash."""
    try:
        manifest = read_signed_manifest(folder).verify(trusted_signer)
    except ManifestError as exc:
        raise ExportError(f"refusing to export {folder}: {exc}") from None
    names = {entry.name for entry in manifest.files}
    if not set(ADAPTER_FILES) <= names:
        raise ExportError(f"refusing to export {folder}: its manifest lists {sorted(names)}, not the adapter files")
    try:
        verify_files(folder, manifest)
    except ManifestError as exc:
        raise ExportError(f"refusing to export {folder}: {exc}") from None
    return manifest


def _copy_verified(version_dir: Path, target: Path, trusted_signer: str | None) -> Manifest:
    """Copy the manifest, signature and listed files, then verify the copies: what is checked is what ships."""
    for name in (MANIFEST_FILE, SIGNATURE_FILE):
        if not (version_dir / name).is_file():
            raise ExportError(f"refusing to export {version_dir}: it has no {name} (not a signed version)")
        shutil.copyfile(version_dir / name, target / name)
    try:
        listed = read_signed_manifest(target).verify(trusted_signer).files
    except ManifestError as exc:
        raise ExportError(f"refusing to export {version_dir}: {exc}") from None
    for entry in listed:
        if not (version_dir / entry.name).is_file():
            raise ExportError(f"refusing to export {version_dir}: {entry.name} is missing")
        shutil.copyfile(version_dir / entry.name, target / entry.name)
    return _verify(target, trusted_signer)


def _code(value: object) -> str:
    return "`" + str(value).replace("`", "'").replace("\n", " ") + "`"


def _card_front_matter(manifest: Manifest, merged: bool) -> str:
    meta: dict[str, object] = {"library_name": "transformers" if merged else "peft"}
    if is_hub_model_id(manifest.base_model):
        meta["base_model"] = manifest.base_model
    meta["tags"] = list(TAGS)
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _write_card(folder: Path, manifest: Manifest, *, merged: bool, extra_files: list[FileDigest]) -> None:
    kind = "merged model" if merged else "LoRA adapter"
    delta = manifest.eval_loss - manifest.base_eval_loss
    lines = [
        _card_front_matter(manifest, merged),
        f"# {manifest.run} v{manifest.version}: nomoat {kind}",
        "",
        f"A {kind} trained by a nomoat community fine-tuning swarm and published by its coordinator,"
        " which signed the manifest shipped beside it (`nomoat_manifest.json`, `nomoat_manifest.sig`).",
        "",
        "| | |",
        "|---|---|",
        f"| Run | {_code(manifest.run)} |",
        f"| Version | {manifest.version} |",
        f"| Base model | {_code(manifest.base_model)} |",
        f"| Base model fingerprint | {_code(manifest.base_model_fingerprint)} |",
        f"| Parent | {_code(manifest.parent) if manifest.parent else 'none (a root run)'} |",
        f"| Parent chain (root first) | {' -> '.join(_code(link) for link in manifest.chain) or 'none'} |",
        f"| Spec hash | {_code(manifest.spec_hash)} |",
        f"| Epoch | {manifest.epoch} |",
        f"| Samples trained | {manifest.samples} |",
        f"| Eval loss | {manifest.eval_loss:.4f} (base{' + parent chain' if manifest.chain else ''}: "
        f"{manifest.base_eval_loss:.4f}, change {delta:+.4f}) |",
        f"| Peers compared | {manifest.peers_compared} |",
        f"| Published | {_code(manifest.created_at)} |",
        f"| Coordinator (signer) | {_code(manifest.coordinator)} |",
        f"| Content digest | {_code(manifest.sha256)} |",
        "",
        *contributor_lines(manifest),
        "",
        *hyperparameter_lines(manifest),
        "",
        "## Files",
        "",
        "| File | Bytes | sha256 |",
        "|---|---|---|",
    ]
    prefix = f"{MERGED_ADAPTER_FOLDER}/" if merged else ""
    lines += [f"| {_code(prefix + entry.name)} | {entry.size} | {_code(entry.sha256)} |" for entry in manifest.files]
    signed = [FileDigest(prefix + name, (folder / prefix / name).stat().st_size, file_sha256(folder / prefix / name))
              for name in (MANIFEST_FILE, SIGNATURE_FILE)]
    lines += [f"| {_code(entry.name)} | {entry.size} | {_code(entry.sha256)} |" for entry in signed + extra_files]
    lines += ["", "## How to load", "", *_load_snippet(manifest, merged), ""]
    (folder / MODEL_CARD).write_text("\n".join(lines))


def _load_snippet(manifest: Manifest, merged: bool) -> list[str]:
    repo = "REPO_ID_OR_THIS_FOLDER"
    if merged:
        return ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                f"model = AutoModelForCausalLM.from_pretrained(\"{repo}\")",
                f"tokenizer = AutoTokenizer.from_pretrained(\"{repo}\")", "```"]
    if manifest.base_model == TINY_PRESET:
        base = ["from swarm.model import build_tiny_model  # the 'tiny' preset is built by nomoat, not downloaded",
                "", "base = build_tiny_model()"]
    else:
        base = ["from transformers import AutoModelForCausalLM", "",
                f"base = AutoModelForCausalLM.from_pretrained({json.dumps(manifest.base_model)})"]
    chain = []
    if manifest.chain:
        chain = ["# this run was stacked on earlier versions: merge them into the base first, root first",
                 "# (folders pulled with `swarm pull --run RUN --version N`): "
                 + ", ".join(str(link) for link in manifest.chain),
                 f"for parent in {json.dumps([f'./{link.run}-v{link.version}' for link in manifest.chain])}:",
                 "    base = PeftModel.from_pretrained(base, parent).merge_and_unload()"]
    return ["```python", "from peft import PeftModel", *base, *chain,
            f"model = PeftModel.from_pretrained(base, \"{repo}\")", "```"]
