"""Builds the Python protobuf/gRPC stubs from ``proto/`` into ``vectorsearch/``.

Usage: ``python -m vsproto.build``. Uses grpcio-tools, pinned to the grpcio version in
pyproject.toml so generated code and runtime agree.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from vsproto.freshness import OUT_PACKAGE, PROTO_ROOT, STAMP, fingerprint, proto_files


def build() -> Path:
    from grpc_tools import protoc  # imported lazily: only the build step needs grpcio-tools

    files = proto_files()
    if not files:
        raise SystemExit(f"no .proto files under {PROTO_ROOT}")
    include = Path(protoc.__file__).resolve().parent / "_proto"
    with tempfile.TemporaryDirectory(dir=OUT_PACKAGE.parent) as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(p) for p in files],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed; see the messages above")
        generated = Path(tmp) / "vectorsearch"
        for package in [generated, *[p for p in generated.rglob("*") if p.is_dir()]]:
            (package / "__init__.py").touch()
        (generated / "STAMP").write_text(fingerprint() + "\n")
        if OUT_PACKAGE.exists():
            shutil.rmtree(OUT_PACKAGE)
        shutil.move(str(generated), str(OUT_PACKAGE))
    return STAMP


if __name__ == "__main__":
    stamp = build()
    print(f"stubs written to {stamp.parent}", file=sys.stderr)
