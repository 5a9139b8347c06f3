"""python -m rechar.uarch.summarize DUMP CALLS BATCH < the simulated machine's record (JSON):
the point's summary (rechar.uarch.callgrind.summarize) as JSON on stdout.

The worker under Valgrind runs this as a child so that parsing and attribution run natively
(rechar.uarch.callgrind.summarize_natively). The child needs the taxonomy's tables but not
``rechar.analysis``'s package module, which imports every analysis and, through the models,
PyTorch (seconds; over ten on a busy machine): the package is entered here as a bare namespace
before anything imports it.
"""

import json
import sys
import types
from pathlib import Path

if "rechar.analysis" not in sys.modules:
    _package = types.ModuleType("rechar.analysis")
    _package.__path__ = [str(Path(__file__).resolve().parents[1] / "analysis")]
    sys.modules["rechar.analysis"] = _package

from rechar.uarch.callgrind import summarize  # noqa: E402  (after the namespace above)


def main(argv: list[str]) -> int:
    dump, calls, batch = Path(argv[1]), int(argv[2]), int(argv[3])
    json.dump(summarize(dump, calls, batch, json.load(sys.stdin)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
