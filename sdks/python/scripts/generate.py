#!/usr/bin/env python3
"""Regenerates the protobuf and gRPC code committed in sdks/python/jobd/v1
from proto/jobd/v1/jobd.proto.

    pip install grpcio-tools==1.75.1
    python3 sdks/python/scripts/generate.py            # rewrites jobd/v1 in place
    python3 sdks/python/scripts/generate.py --out DIR  # writes DIR/v1 instead (the staleness test)

The code lands in the `jobd` package as `jobd.v1`, the same module path
protoc gives the proto package, so the generated imports (`from jobd.v1
import jobd_pb2`) work unchanged and the stubs are the ones the raw
examples (examples/python/worker.py) import. `google/rpc/status.proto` is
not generated: googleapis-common-protos ships `google.rpc.status_pb2`.

The grpcio-tools version is pinned: it decides the minimum protobuf and
grpcio runtimes the package needs (see pyproject.toml). --any-version lets
another version write to --out, for comparisons.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

PIN = "1.75.1"
HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent / "jobd"
PROTO_ROOT = HERE.parent.parent.parent / "proto"
PROTO = "jobd/v1/jobd.proto"
INIT = '''"""Code generated from proto/jobd/v1/jobd.proto by sdks/python/scripts/generate.py.
DO NOT EDIT: run the script instead.

`jobd_pb2` holds the messages, `jobd_pb2_grpc` the service stubs. The SDK
(`jobd.Client`, `jobd.Worker`) wraps them; they are importable for anything
the SDK does not cover yet.
"""
GENERATED_WITH = "grpcio-tools {version}"
'''


def tools_version() -> str:
    from importlib.metadata import version

    return version("grpcio-tools")


def generate(out: Path, proto_root: Path = PROTO_ROOT) -> None:
    """Writes out/v1/{__init__.py, jobd_pb2.py, jobd_pb2.pyi, jobd_pb2_grpc.py}."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            PROTO,
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed: {' '.join(args)}")
        v1 = out / "v1"
        v1.mkdir(parents=True, exist_ok=True)
        for name in ("jobd_pb2.py", "jobd_pb2.pyi", "jobd_pb2_grpc.py"):
            shutil.copyfile(Path(tmp) / "jobd" / "v1" / name, v1 / name)
        (v1 / "__init__.py").write_text(INIT.format(version=tools_version()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=PACKAGE, help="package directory to write v1/ into")
    p.add_argument("--proto-root", type=Path, default=PROTO_ROOT)
    p.add_argument("--any-version", action="store_true", help="accept a grpcio-tools other than the pin")
    a = p.parse_args()
    try:
        have = tools_version()
    except Exception:
        print(f"grpcio-tools is not installed: pip install grpcio-tools=={PIN}", file=sys.stderr)
        return 2
    if have != PIN and not a.any_version:
        print(
            f"grpcio-tools {have} is installed; the package is generated with {PIN} "
            f"(pip install grpcio-tools=={PIN}, or --any-version with --out)",
            file=sys.stderr,
        )
        return 2
    generate(a.out, a.proto_root)
    print(f"generated {os.path.relpath(a.out / 'v1')} with grpcio-tools {have}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
