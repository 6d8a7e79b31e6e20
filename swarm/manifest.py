"""Signed manifests of published adapter versions: what a version is, where it came from, and the hash of every
file, signed by the coordinator's identity key (the same RSA key as its libp2p peer ID).

A manifest travels and is stored as two files beside the adapter: ``nomoat_manifest.json`` (the canonical
signed bytes) and ``nomoat_manifest.sig`` (JSON: the signer's public key and the signature, base64). A puller
verifies the signature over the exact bytes, that the signer is the coordinator it trusts, and every file's
size and sha256, before anything reaches its output folder.

Usage::

    manifest = Manifest(run="demo", version=3, ..., files=tuple(describe_files(folder)))
    signed = sign_manifest(manifest, coordinator_identity)
    signed.write(folder)
    verified = read_signed_manifest(folder).verify(trusted_signer="Qm...")   # -> Manifest, or ManifestError
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

from swarm.adapter_files import FileDigest, file_sha256, version_digest
from swarm.identity import Identity, peer_id_of_public_key, verify_signature
from swarm.spec import RUN_NAME_PATTERN

MANIFEST_FORMAT = "nomoat.manifest.v1"
MANIFEST_FILE = "nomoat_manifest.json"
SIGNATURE_FILE = "nomoat_manifest.sig"


class ManifestError(ValueError):
    """A manifest whose signature, signer, fields or files cannot be trusted."""


class FileMismatchError(ManifestError):
    """A file the manifest lists is missing from the folder, or its size or sha256 differs; ``name`` says which."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name


@dataclass(frozen=True)
class ChainLink:
    """One published version, named by run, number and the digest of its files."""

    run: str
    version: int
    sha256: str

    def __str__(self) -> str:
        return f"{self.run}@{self.version}"


@dataclass(frozen=True)
class Manifest:
    run: str
    version: int
    spec_hash: str  # RunSpec.content_hash of the run
    base_model: str  # the run's base model ('tiny', a Hub id or a path)
    base_model_fingerprint: str  # of the base *before* any parent adapters are merged in
    epoch: int  # the swarm's optimizer epoch (global step) the snapshot was taken at
    samples: int  # samples trained in the run when it was published
    eval_loss: float  # on the run's held-out split, with the whole chain applied
    base_eval_loss: float  # same split, base model with the parent chain but without this run's adapter
    contributors: tuple[str, ...]  # peer IDs that contributed since the previous version
    files: tuple[FileDigest, ...]  # every file of the adapter, name order
    created_at: str  # ISO 8601, UTC
    coordinator: str  # peer ID of the signing coordinator
    parent: ChainLink | None = None  # the version this run was stacked on, if any
    chain: tuple[ChainLink, ...] = field(default_factory=tuple)  # ancestors applied before this one, root first
    peers_compared: int = 1  # how many peers' states agreed on this snapshot (per shard, the least)
    # the names contributors gave (`swarm donate --name`), one per contributor in the same order, "" for none:
    # self-chosen by volunteers, so never trusted as identities (the peer IDs are), and escaped wherever shown
    contributor_names: tuple[str, ...] = field(default_factory=tuple)
    spec_json: str = ""  # the run's RunSpec as launched (its sha256 is spec_hash): the hyperparameters travel along

    @property
    def sha256(self) -> str:
        """Digest of the adapter files (swarm.adapter_files.version_digest): names the version's content."""
        return version_digest(list(self.files))

    @property
    def link(self) -> ChainLink:
        return ChainLink(self.run, self.version, self.sha256)

    def to_bytes(self) -> bytes:
        """The canonical bytes that are signed."""
        data = {"format": MANIFEST_FORMAT, **asdict(self)}
        return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_bytes(cls, payload: bytes) -> "Manifest":
        """The manifest in ``payload``, after checking every field's type and range and every file name
        (``check_manifest_data``); ManifestError otherwise. Nothing in a manifest is trusted before this."""
        if len(payload) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest is {len(payload)} bytes, more than the {MAX_MANIFEST_BYTES} allowed")
        try:
            data = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ManifestError(f"manifest is malformed: {exc}") from None
        check_manifest_data(data)
        data.pop("format")
        files = tuple(FileDigest(**entry) for entry in data.pop("files"))
        parent = data.pop("parent", None)
        chain = tuple(ChainLink(**link) for link in data.pop("chain", []))
        contributors = tuple(data.pop("contributors"))
        names = tuple(data.pop("contributor_names", ()))
        return cls(**data, files=files, parent=ChainLink(**parent) if parent else None, chain=chain,
                   contributors=contributors, contributor_names=names)

    def display_name(self, index: int) -> str:
        """The name the ``index``-th contributor gave ("" when none was recorded)."""
        return self.contributor_names[index] if index < len(self.contributor_names) else ""


# Bounds of what a manifest may hold: far above any real adapter, low enough that nothing hostile gets big.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_FILES = 64
MAX_FILE_BYTES = 64 * 1024 ** 3
MAX_TEXT = 4096
MAX_NAME = 256  # a worker's display name (the coordinator stores at most this many characters)
MAX_SPEC_JSON = 65536
MAX_CONTRIBUTORS = 100_000
MAX_CHAIN = 64
MAX_COUNT = 2 ** 62
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TEXT_FIELDS = ("run", "spec_hash", "base_model", "base_model_fingerprint", "created_at", "coordinator")
_FIELDS = {"format", "run", "version", "spec_hash", "base_model", "base_model_fingerprint", "epoch", "samples",
           "eval_loss", "base_eval_loss", "contributors", "files", "created_at", "coordinator", "parent", "chain",
           "peers_compared", "contributor_names", "spec_json"}
_OPTIONAL = {"parent", "chain", "peers_compared", "contributor_names", "spec_json"}


def check_manifest_data(data: object) -> None:
    """ManifestError unless ``data`` (a decoded manifest) has exactly the manifest's fields, each of its type
    (ints are ints, not bools or floats; strings are bounded strings; lists are lists) and in range, and its
    files have safe, unique names."""
    if not isinstance(data, dict):
        raise ManifestError("manifest is not a JSON object")
    if data.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"not a {MANIFEST_FORMAT} manifest")
    missing, unknown = _FIELDS - _OPTIONAL - data.keys(), data.keys() - _FIELDS
    if missing or unknown:
        raise ManifestError(f"manifest fields are wrong: missing {sorted(missing)}, unknown {sorted(unknown)}")
    for name in _TEXT_FIELDS:
        _text(data[name], name)
    _run_name(data["run"], "run")
    _count(data["version"], "version", low=1)
    _count(data["epoch"], "epoch")
    _count(data["samples"], "samples")
    _count(data.get("peers_compared", 1), "peers_compared", low=1)
    for name in ("eval_loss", "base_eval_loss"):
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ManifestError(f"manifest field {name} is not a finite number: {value!r:.80}")
    for peer in _list(data["contributors"], "contributors", MAX_CONTRIBUTORS):
        _text(peer, "contributors[]")
    given_names = _list(data.get("contributor_names", []), "contributor_names", MAX_CONTRIBUTORS)
    if given_names and len(given_names) != len(data["contributors"]):
        raise ManifestError(f"manifest lists {len(given_names)} contributor names for {len(data['contributors'])} "
                            "contributors")
    for name in given_names:
        if not isinstance(name, str) or len(name) > MAX_NAME:
            raise ManifestError(f"manifest field contributor_names[] is not a string of at most {MAX_NAME} "
                                f"characters: {name!r:.80}")
    spec_json = data.get("spec_json", "")
    if not isinstance(spec_json, str) or len(spec_json) > MAX_SPEC_JSON:
        raise ManifestError(f"manifest field spec_json is not a string of at most {MAX_SPEC_JSON} characters")
    if spec_json and "sha256:" + hashlib.sha256(spec_json.encode()).hexdigest() != data["spec_hash"]:
        raise ManifestError(f"manifest field spec_json does not hash to its spec_hash {data['spec_hash']!r:.80}")
    if data.get("parent") is not None:
        _link(data["parent"], "parent")
    for link in _list(data.get("chain", []), "chain", MAX_CHAIN):
        _link(link, "chain[]")
    files = _list(data["files"], "files", MAX_FILES)
    if not files:
        raise ManifestError("manifest lists no files")
    names = set()
    for entry in files:
        if not isinstance(entry, dict) or entry.keys() != {"name", "size", "sha256"}:
            raise ManifestError(f"manifest file entry is not {{name, size, sha256}}: {entry!r:.80}")
        check_file_name(entry["name"])
        if entry["name"] in names:
            raise ManifestError(f"manifest lists the file {entry['name']!r} twice")
        names.add(entry["name"])
        _count(entry["size"], f"size of {entry['name']}", high=MAX_FILE_BYTES)
        _sha256(entry["sha256"], f"sha256 of {entry['name']}")


def check_file_name(name: object) -> None:
    """ManifestError unless ``name`` is a plain file name: no folder part, not hidden, no control characters,
    and not one of the manifest's own files."""
    if not isinstance(name, str) or not name or len(name) > 255:
        raise ManifestError(f"manifest names an unsafe file: {name!r:.80} (not a plain file name)")
    if ("/" in name or "\\" in name or ":" in name or name.startswith(".") or ".." in name
            or any(unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") for char in name)
            or name in (MANIFEST_FILE, SIGNATURE_FILE)):
        raise ManifestError(f"manifest names an unsafe file: {name!r:.80} (only plain names are allowed)")


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ManifestError(f"manifest field {name} is not a string of at most {MAX_TEXT} characters: {value!r:.80}")
    return value


def _run_name(value: object, name: str) -> None:
    # run names become folder names (``pull --chain``): the same rule as RunSpec's
    if not isinstance(value, str) or not RUN_NAME_PATTERN.fullmatch(value):
        raise ManifestError(f"manifest field {name} is not a run name: {value!r:.80}")


def _count(value: object, name: str, low: int = 0, high: int = MAX_COUNT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ManifestError(f"manifest field {name} is not an integer from {low} to {high}: {value!r:.80}")
    return value


def _list(value: object, name: str, limit: int) -> list:
    if not isinstance(value, list) or len(value) > limit:
        raise ManifestError(f"manifest field {name} is not a list of at most {limit} items")
    return value


def _sha256(value: object, name: str) -> None:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise ManifestError(f"manifest field {name} is not a sha256 hex digest: {value!r:.80}")


def _link(value: object, name: str) -> None:
    if not isinstance(value, dict) or value.keys() != {"run", "version", "sha256"}:
        raise ManifestError(f"manifest field {name} is not {{run, version, sha256}}: {value!r:.80}")
    _run_name(value["run"], f"{name}.run")
    _count(value["version"], f"{name}.version", low=1)
    _sha256(value["sha256"], f"{name}.sha256")


@dataclass(frozen=True)
class SignedManifest:
    payload: bytes  # Manifest.to_bytes(): what was signed
    public_key: bytes  # DER SubjectPublicKeyInfo of the coordinator's identity key
    signature: bytes  # RSA PKCS#1 v1.5 / SHA-256 over payload

    @property
    def signer(self) -> str:
        """The peer ID the public key derives to (whether or not the signature holds)."""
        return peer_id_of_public_key(self.public_key)

    def verify(self, trusted_signer: str | None = None) -> Manifest:
        """The manifest, if the signature holds, it names its own signer, and (if given) that signer is trusted."""
        if not verify_signature(self.public_key, self.payload, self.signature):
            raise ManifestError("the manifest's signature does not match its contents (tampered manifest)")
        manifest = Manifest.from_bytes(self.payload)
        signer = self.signer
        if manifest.coordinator != signer:
            raise ManifestError(f"the manifest names coordinator {manifest.coordinator} but is signed by {signer}")
        if trusted_signer is not None and signer != trusted_signer:
            raise ManifestError(f"the manifest is signed by {signer}, not by the trusted coordinator {trusted_signer}")
        return manifest

    def signature_json(self) -> str:
        return json.dumps({"public_key": base64.b64encode(self.public_key).decode(),
                           "signature": base64.b64encode(self.signature).decode()}, indent=2)

    def write(self, folder: Path) -> None:
        (Path(folder) / MANIFEST_FILE).write_bytes(self.payload)
        (Path(folder) / SIGNATURE_FILE).write_text(self.signature_json())

    @classmethod
    def from_parts(cls, payload: bytes, signature_json: str) -> "SignedManifest":
        try:
            data = json.loads(signature_json)
            return cls(payload, base64.b64decode(data["public_key"]), base64.b64decode(data["signature"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"manifest signature file is malformed: {exc}") from None


def sign_manifest(manifest: Manifest, identity: Identity) -> SignedManifest:
    if manifest.coordinator != identity.peer_id:
        raise ManifestError(f"manifest names coordinator {manifest.coordinator}, signer is {identity.peer_id}")
    payload = manifest.to_bytes()
    return SignedManifest(payload, identity.public_key_der, identity.sign(payload))


def verify_files(folder: Path, manifest: Manifest) -> None:
    """Check every file ``manifest`` lists against ``folder``: present, with the listed size and sha256.

    Raises FileMismatchError for the first file that is missing or differs (sizes are compared before hashing,
    so a short file costs no hash). Files the manifest does not list are not looked at.
    """
    folder = Path(folder)
    for entry in manifest.files:
        path = folder / entry.name
        if not path.is_file():
            raise FileMismatchError(f"{entry.name} is missing", entry.name)
        size = path.stat().st_size
        if size != entry.size:
            raise FileMismatchError(f"{entry.name} is {size} bytes, but the signed manifest says {entry.size} "
                                    f"(corrupted or tampered file)", entry.name)
        actual = file_sha256(path)
        if actual != entry.sha256:
            raise FileMismatchError(f"{entry.name} hashes to {actual}, but the signed manifest says {entry.sha256} "
                                    f"(corrupted or tampered file)", entry.name)


def read_signed_manifest(folder: Path) -> SignedManifest:
    """The signed manifest stored in ``folder`` (a pulled or stored version); ManifestError if missing."""
    folder = Path(folder)
    try:
        payload = (folder / MANIFEST_FILE).read_bytes()
        signature_json = (folder / SIGNATURE_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:  # a binary .sig must be a ManifestError, not a bare ValueError
        raise ManifestError(f"{folder} holds no signed manifest: {exc}") from None
    return SignedManifest.from_parts(payload, signature_json)
