"""Contribution receipts: what one worker trained on one shard over one interval, signed with its identity.

The signature covers the exact payload bytes (canonical JSON), so the coordinator verifies the bytes it got
before it parses them. A receipt's id makes resending idempotent: the worker's outbox resends until the
coordinator has it, and the coordinator counts each id once.

Usage::

    receipt = Receipt.new(run="demo", shard=0, peer_id=identity.peer_id, epoch=3, steps=12, samples=96,
                          tokens=6144, compute_seconds=8.1, loss=4.2, started_at=t0, ended_at=t1)
    signed = sign_receipt(receipt, identity)      # what travels (SignedReceipt)
    verify_receipt(signed)                        # -> Receipt, or ReceiptError
"""

from __future__ import annotations

import json
import math
import re
import uuid
from typing import Any
from dataclasses import asdict, dataclass, fields

from swarm.identity import Identity, peer_id_of_public_key, verify_signature
from swarm.spec import RUN_NAME_PATTERN

RECEIPT_FORMAT = "nomoat.receipt.v1"
MAX_PAYLOAD_BYTES = 4096
OPTIONAL_FIELDS = {"precision": ""}  # fields added later, with the value a receipt without them means
PRECISION_PATTERN = re.compile(r"(|fp32|bf16|fp16|8bit|4bit)")
RECEIPT_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
PEER_ID_PATTERN = re.compile(r"[1-9A-HJ-NP-Za-km-z]{32,128}")  # base58
# Inclusive bounds of every numeric field: far beyond any honest receipt, small enough for every database and
# datetime (a receipt's times are unix seconds up to the year 2200).
FIELD_BOUNDS: dict[str, tuple[float, float]] = {
    "shard": (0, 4095), "epoch": (0, 2**31 - 1), "steps": (0, 2**40), "samples": (0, 2**40), "tokens": (0, 2**50),
    "compute_seconds": (0.0, 3.2e7), "loss": (-1e6, 1e6), "started_at": (0.0, 7.3e9), "ended_at": (0.0, 7.3e9),
}


class ReceiptError(ValueError):
    """A receipt whose signature, signer or fields cannot be accepted."""


@dataclass(frozen=True)
class Receipt:
    receipt_id: str  # uuid4 hex chosen by the worker; resending the same receipt is idempotent
    run: str
    shard: int
    peer_id: str  # the signer: libp2p peer ID of the worker's identity key
    epoch: int  # the shard's hivemind epoch when the interval ended
    steps: int  # local steps in the interval
    samples: int  # training samples processed
    tokens: int  # tokens that carried a loss
    compute_seconds: float  # time spent in forward/backward/optimizer for this shard
    loss: float  # mean training loss over the steps
    started_at: float  # unix time the interval began
    ended_at: float  # unix time the interval ended
    precision: str = ""  # the worker's precision (swarm.precision: fp32, bf16, fp16, 8bit, 4bit); "" before it was sent

    @classmethod
    def new(cls, **values) -> "Receipt":
        return cls(receipt_id=uuid.uuid4().hex, **values)

    def payload(self) -> bytes:
        """The canonical bytes that are signed."""
        return json.dumps({"format": RECEIPT_FORMAT, **asdict(self)}, sort_keys=True,
                          separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_payload(cls, payload: bytes) -> "Receipt":
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise ReceiptError(f"receipt payload is {len(payload)} bytes; at most {MAX_PAYLOAD_BYTES} are accepted")
        try:
            data = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReceiptError(f"receipt payload is not JSON: {exc}") from None
        if not isinstance(data, dict) or data.pop("format", None) != RECEIPT_FORMAT:
            raise ReceiptError(f"receipt payload is not a {RECEIPT_FORMAT} object")
        expected = {field.name: field.type for field in fields(cls)}
        data = {**OPTIONAL_FIELDS, **data}  # receipts made before these fields existed still verify
        if set(data) != set(expected):
            raise ReceiptError(f"receipt fields {sorted(data)} differ from {sorted(expected)}")
        for name, kind in expected.items():
            value = data[name]
            if kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
                raise ReceiptError(f"receipt field {name} must be an integer, got {value!r}")
            if kind == "float" and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                    or not math.isfinite(value)):
                raise ReceiptError(f"receipt field {name} must be a finite number, got {value!r}")
            if kind == "str" and not isinstance(value, str):
                raise ReceiptError(f"receipt field {name} must be a string, got {value!r}")
            if name in FIELD_BOUNDS and not FIELD_BOUNDS[name][0] <= value <= FIELD_BOUNDS[name][1]:
                low, high = FIELD_BOUNDS[name]
                raise ReceiptError(f"receipt field {name} must be within {low:g}..{high:g}, got {value:g}")
        for name, pattern in (("receipt_id", RECEIPT_ID_PATTERN), ("run", RUN_NAME_PATTERN),
                              ("peer_id", PEER_ID_PATTERN), ("precision", PRECISION_PATTERN)):
            if not pattern.fullmatch(data[name]):
                raise ReceiptError(f"receipt field {name} is malformed: {data[name][:80]!r}")
        values: dict[str, Any] = {name: float(data[name]) if kind == "float" else data[name]
                                  for name, kind in expected.items()}
        return cls(**values)


@dataclass(frozen=True)
class SignedReceipt:
    payload: bytes
    public_key: bytes  # DER SubjectPublicKeyInfo of the signer's RSA key
    signature: bytes


def sign_receipt(receipt: Receipt, identity: Identity) -> SignedReceipt:
    if receipt.peer_id != identity.peer_id:
        raise ReceiptError(f"receipt names peer {receipt.peer_id}, but the identity is {identity.peer_id}")
    payload = receipt.payload()
    return SignedReceipt(payload=payload, public_key=identity.public_key_der, signature=identity.sign(payload))


def verify_receipt(signed: SignedReceipt) -> Receipt:
    """The receipt, if its signature is valid and its signer is the peer it names; else ``ReceiptError``."""
    receipt = Receipt.from_payload(signed.payload)
    try:
        signer = peer_id_of_public_key(signed.public_key)
    except Exception as exc:
        raise ReceiptError(f"receipt {receipt.receipt_id}: unusable public key: {exc}") from None
    if signer != receipt.peer_id:
        raise ReceiptError(f"receipt {receipt.receipt_id} names peer {receipt.peer_id} but is signed by the key "
                           f"of {signer}")
    if not verify_signature(signed.public_key, signed.payload, signed.signature):
        raise ReceiptError(f"receipt {receipt.receipt_id}: signature does not match peer {receipt.peer_id}")
    return receipt
