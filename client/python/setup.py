# SPDX-License-Identifier: Apache-2.0
"""Builds attribution_client: generates the gRPC stubs of the repository's proto with grpcio-tools.

The proto is read from ../../proto (the repository this package lives in); the generated modules go
into the build tree only (attribution_client/_generated), so nothing generated is ever committed.
"""
import pathlib
import re

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
PROTO = "attribution/v1/attribution.proto"


def proto_version() -> str:
    """1.0.0 for `package attribution.v1;`: the wire contract's major version is the package's."""
    text = (PROTO_ROOT / PROTO).read_text(encoding="utf-8")
    match = re.search(r"^package\s+attribution\.v(\d+)\s*;", text, re.MULTILINE)
    if not match:
        raise RuntimeError(f"{PROTO_ROOT / PROTO}: no `package attribution.vN;` line")
    return f"{match.group(1)}.0.0"


class BuildWithStubs(build_py):
    """build_py, then protoc (grpcio-tools) into <build>/attribution_client/_generated."""

    def run(self) -> None:
        super().run()
        from grpc_tools import protoc  # a build requirement (pyproject.toml)

        out = pathlib.Path(self.build_lib) / "attribution_client" / "_generated"
        out.mkdir(parents=True, exist_ok=True)
        include = pathlib.Path(protoc.__file__).parent / "_proto"
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
                f"--grpc_python_out={out}", str(PROTO_ROOT / PROTO)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO_ROOT / PROTO}")
        generated = out / "attribution" / "v1"
        for package in (out, out / "attribution", generated):
            (package / "__init__.py").touch()
        # protoc writes absolute imports (`from attribution.v1 import attribution_pb2`); ours are relative
        # so that the stubs live inside this package and claim no top-level `attribution` module.
        stub = generated / "attribution_pb2_grpc.py"
        stub.write_text(stub.read_text(encoding="utf-8").replace(
            "from attribution.v1 import attribution_pb2", "from . import attribution_pb2"), encoding="utf-8")


setup(version=proto_version(), cmdclass={"build_py": BuildWithStubs})
