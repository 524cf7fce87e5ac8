"""Generate ``drift_pb2.py`` and ``drift_pb2_grpc.py`` from ``drift.proto`` (committed; a test checks they are fresh).

``python -m drift_engine.server.codegen`` rewrites them in place (needs ``grpcio-tools``, a dev dependency);
``generate(out_dir)`` writes them elsewhere (the staleness test compares the two). The gRPC module's
``import drift_pb2`` is made package-relative so the modules work as ``drift_engine.server.*``. The generated
code requires the protobuf and grpcio runtime versions of the generator or newer (it checks at import).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = "drift.proto"
OUTPUTS = ("drift_pb2.py", "drift_pb2_grpc.py")
_ABSOLUTE_IMPORT = "import drift_pb2 as drift__pb2"
_RELATIVE_IMPORT = "from . import drift_pb2 as drift__pb2"


def generate(out_dir: str | os.PathLike) -> list[Path]:
    """Run protoc (from grpc_tools) on ``drift.proto`` into ``out_dir``; return the written files."""
    from grpc_tools import protoc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # the file is named relative to its -I root, so no path of this machine ends up in the generated code
    args = ["grpc_tools.protoc", f"-I{HERE}", f"--python_out={out}", f"--grpc_python_out={out}", str(HERE / PROTO)]
    status = protoc.main(args)
    if status != 0:
        raise RuntimeError(f"protoc failed on {PROTO} (exit status {status})")
    grpc_module = out / OUTPUTS[1]
    text = grpc_module.read_text()
    if _ABSOLUTE_IMPORT not in text:
        raise RuntimeError(f"unexpected generated code: {_ABSOLUTE_IMPORT!r} not found in {OUTPUTS[1]}")
    grpc_module.write_text(text.replace(_ABSOLUTE_IMPORT, _RELATIVE_IMPORT))
    return [out / name for name in OUTPUTS]


def main() -> int:
    for path in generate(HERE):
        print(f"wrote {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
