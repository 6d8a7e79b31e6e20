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
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from swarm.adapter_files import FileDigest, file_sha256, version_digest
from swarm.identity import Identity, peer_id_of_public_key, verify_signature

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
        try:
            data = json.loads(payload)
            if data.pop("format", None) != MANIFEST_FORMAT:
                raise ManifestError(f"not a {MANIFEST_FORMAT} manifest")
            files = tuple(FileDigest(**entry) for entry in data.pop("files"))
            parent = data.pop("parent")
            chain = tuple(ChainLink(**link) for link in data.pop("chain"))
            contributors = tuple(data.pop("contributors"))
            manifest = cls(**data, files=files, parent=ChainLink(**parent) if parent else None, chain=chain,
                           contributors=contributors)
        except ManifestError:
            raise
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ManifestError(f"manifest is malformed: {exc}") from None
        if not isinstance(manifest.version, int) or not isinstance(manifest.epoch, int) or not all(
                isinstance(peer, str) for peer in manifest.contributors):
            raise ManifestError("manifest fields have the wrong types")
        for name in ("eval_loss", "base_eval_loss"):
            if not isinstance(getattr(manifest, name), (int, float)) or not math.isfinite(getattr(manifest, name)):
                raise ManifestError(f"manifest field {name} is not a finite number")
        for entry in manifest.files:
            if not entry.name or "/" in entry.name or "\\" in entry.name or entry.name.startswith("."):
                raise ManifestError(f"manifest names an unsafe file: {entry.name!r}")
        return manifest


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
