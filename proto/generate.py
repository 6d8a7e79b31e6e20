"""Regenerate the committed Python stubs from coordinator.proto.

Run from the repository root:  python -m proto.generate   (needs the dev extra: grpcio-tools)
``tests/test_proto_sync.py`` regenerates into a temporary folder and fails if the committed stubs differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILES = ["coordinator.proto"]


def generate(out_root: Path) -> list[Path]:
    """Write ``proto/*_pb2.py`` and ``*_pb2_grpc.py`` under ``out_root`` (the folder that holds ``proto/``)."""
    from grpc_tools import protoc

    (out_root / "proto").mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    for name in PROTO_FILES:
        args = [
            "protoc",
            f"-I{PROTO_DIR.parent}",
            f"-I{include}",
            f"--python_out={out_root}",
            f"--grpc_python_out={out_root}",
            f"proto/{name}",
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {name}")
    return sorted((out_root / "proto").glob("*_pb2*.py"))


if __name__ == "__main__":
    written = generate(PROTO_DIR.parent)
    sys.stdout.write("".join(f"wrote {path}\n" for path in written))
