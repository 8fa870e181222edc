"""The suite covers every conformance scenario, and the committed generated
code matches proto/."""
from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO, SDK, need

CONFORMANCE = REPO / "tests" / "sdk" / "conformance.txt"
GENERATED = ["__init__.py", "jobd_pb2.py", "jobd_pb2.pyi", "jobd_pb2_grpc.py"]


def scenarios():
    return [
        line.strip()
        for line in CONFORMANCE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_every_conformance_scenario_has_a_test():
    names = set()
    for f in Path(__file__).parent.glob("test_*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.FunctionDef):
                names.add(node.name)
    listed = scenarios()
    assert listed, f"no scenario in {CONFORMANCE}"
    missing = [s for s in listed if f"test_{s}" not in names]
    assert not missing, f"conformance scenarios without a test_<name> in {Path(__file__).parent}: {missing}"


def _descriptor(py: str) -> bytes:
    m = re.search(r"AddSerializedFile\((b'.*?')\)\n", py, re.S)
    assert m, "no serialized descriptor in jobd_pb2.py"
    return ast.literal_eval(m.group(1))


def test_generated_code_is_fresh(tmp_path):
    need("grpcio-tools", importlib.util.find_spec("grpc_tools") is not None, "pip install grpcio-tools")
    script = SDK / "scripts" / "generate.py"
    out = subprocess.run(
        [sys.executable, str(script), "--any-version", "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    committed, fresh = SDK / "jobd" / "v1", tmp_path / "v1"
    pin = re.search(r'^PIN = "(.*)"', script.read_text(), re.M).group(1)  # type: ignore[union-attr]
    from importlib.metadata import version

    hint = f"the generated code is stale: run `python3 {script.relative_to(REPO)}` (with grpcio-tools=={pin})"
    if version("grpcio-tools") == pin:
        for name in GENERATED:
            assert (committed / name).read_text() == (fresh / name).read_text(), f"{name}: {hint}"
    else:
        # Another grpcio-tools formats code its own way: compare what the
        # code is made of, the proto's descriptor and the RPC methods.
        a, b = (committed / "jobd_pb2.py").read_text(), (fresh / "jobd_pb2.py").read_text()
        assert _descriptor(a) == _descriptor(b), hint
        methods = lambda p: sorted(set(re.findall(r"'/jobd\.v1\.\w+/\w+'", p.read_text())))  # noqa: E731
        assert methods(committed / "jobd_pb2_grpc.py") == methods(fresh / "jobd_pb2_grpc.py"), hint
