"""Regenerate the committed Python stubs in ``nomoat_proto/`` from the ``.proto`` files of this folder.

Run from the repository root:  python proto/generate.py   (needs the dev extra: grpcio-tools)
``tests/test_proto_sync.py`` regenerates into a temporary folder and fails if the committed stubs differ.

The ``.proto`` files stay here; protoc sees them as ``nomoat_proto/<name>.proto`` (a virtual include path), so
the stubs import each other as ``nomoat_proto.<name>_pb2``. This folder is not a Python package on purpose.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PACKAGE = "nomoat_proto"
PROTO_FILES = ["coordinator.proto"]


def generate(out_root: Path) -> list[Path]:
    """Write ``nomoat_proto/*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` under ``out_root`` (the folder that
    holds ``nomoat_proto/``) and return their paths."""
    from grpc_tools import protoc

    (out_root / PACKAGE).mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    for name in PROTO_FILES:
        args = [
            "protoc",
            f"-I{PACKAGE}={PROTO_DIR}",
            f"-I{include}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",  # message types for mypy
            f"--grpc_python_out={out_root}",
            f"{PACKAGE}/{name}",
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {name}")
    return sorted((out_root / PACKAGE).glob("*_pb2*.py*"))


if __name__ == "__main__":
    written = generate(PROTO_DIR.parent)
    sys.stdout.write("".join(f"wrote {path}\n" for path in written))
