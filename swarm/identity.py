"""A worker's persistent identity: the private key its hivemind/libp2p daemon uses, so its contributor ID is
its libp2p peer ID. Created on first use (a worker's lives at ``swarm.paths.UserDirs.identity_key``). The same
key signs the worker's contribution receipts (``swarm.receipts``) and its hivemind progress records in the DHT.

Usage::

    identity = load_or_create_identity(UserDirs.from_environment().identity_key)   # ~/.config/nomoat/identity.key
    identity.peer_id                              # "Qm..."
    signature = identity.sign(b"payload")         # RSA PKCS#1 v1.5 over SHA-256
    peer_id_of_public_key(identity.public_key_der) == identity.peer_id
    start_dht(initial_peers, identity_path=identity.path)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import multihash
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from swarm.private_files import InsecureFileError, require_private, write_private_file

if TYPE_CHECKING:
    from hivemind.utils.crypto import RSAPrivateKey

# hivemind (and with it torch) is imported only where a key file is read or written: checking signatures and
# peer IDs, as ``swarm status`` and ``swarm pull`` do, needs neither.
_RSA_KEY_TYPE = 0  # libp2p crypto.proto: KeyType.RSA


class IdentityError(ValueError):
    """A key file, public key or signature that cannot be used."""


@dataclass(frozen=True)
class Identity:
    path: Path
    peer_id: str
    private_key: rsa.RSAPrivateKey

    @property
    def public_key_der(self) -> bytes:
        return self.private_key.public_key().public_bytes(serialization.Encoding.DER,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def as_hivemind_key(self) -> RSAPrivateKey:
        """This key as hivemind's RSAPrivateKey, e.g. to sign the DHT records of hivemind's progress tracker."""
        from hivemind.utils.crypto import RSAPrivateKey

        key = RSAPrivateKey.__new__(RSAPrivateKey)
        key._private_key = self.private_key
        return key


def peer_id_of_public_key(public_key_der: bytes) -> str:
    """The libp2p peer ID (base58) of an RSA public key in DER SubjectPublicKeyInfo form, as libp2p derives it:
    the sha2-256 multihash of the key's protobuf ``PublicKey{Type: RSA, Data: der}`` (proto2, so the zero key
    type is written), encoded here by hand so that no hivemind import is needed."""
    encoded = bytes([0x08, _RSA_KEY_TYPE, 0x12]) + _varint(len(public_key_der)) + public_key_der
    digest = multihash.encode(hashlib.sha256(encoded).digest(), multihash.coerce_code("sha2-256"))
    return str(multihash.to_b58_string(digest))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def verify_signature(public_key_der: bytes, data: bytes, signature: bytes) -> bool:
    """True if ``signature`` is the RSA PKCS#1 v1.5 / SHA-256 signature of ``data`` by this public key."""
    try:
        public_key = serialization.load_der_public_key(public_key_der)
    except (ValueError, TypeError):
        return False
    if not isinstance(public_key, rsa.RSAPublicKey):
        return False
    try:
        public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def load_or_create_identity(path: Path) -> Identity:
    """The identity kept in the libp2p key file ``path``, created there if it does not exist: atomically, mode
    0600, in a folder created 0700 (``swarm.private_files``). IdentityError for a key file others can read."""
    from hivemind.p2p import PeerID
    from hivemind.proto import crypto_pb2
    from hivemind.utils.crypto import RSAPrivateKey

    path = Path(path).expanduser()
    if not path.is_file():
        # the format P2P.generate_identity writes, without its moment under the umask
        key = crypto_pb2.PrivateKey(key_type=crypto_pb2.KeyType.RSA, data=RSAPrivateKey().to_bytes())
        try:
            write_private_file(path, key.SerializeToString(), replace=False)
        except FileExistsError:
            pass  # another process created it first: use that one
    try:
        require_private(path)
    except InsecureFileError as exc:
        raise IdentityError(f"refusing to use the identity key: {exc}") from None
    try:
        key_data = crypto_pb2.PrivateKey.FromString(path.read_bytes()).data
        private_key = serialization.load_der_private_key(key_data, password=None)
    except Exception as exc:
        raise IdentityError(f"identity file {path} is not a libp2p private key: {exc}") from None
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise IdentityError(f"identity file {path} holds a {type(private_key).__name__}; nomoat needs an RSA key")
    identity = Identity(path=path, peer_id="", private_key=private_key)
    peer_id = peer_id_of_public_key(identity.public_key_der)
    # the daemon derives the same ID from the file; a mismatch would mean this code disagrees with libp2p
    assert peer_id == PeerID.from_identity(path.read_bytes()).to_base58()
    return Identity(path=path, peer_id=peer_id, private_key=private_key)
