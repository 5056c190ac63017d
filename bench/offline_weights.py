"""How long a missing-weights failure takes with no cache and no network (target: under a second).

    .venv/bin/python bench/offline_weights.py

Runs ``ssnf``'s real extractor build in a fresh process with an empty cache, once with the hub probe
as it is on this machine and once with ``HF_HUB_OFFLINE=1``, and prints the wall time from the call
to the error, plus the one line the user sees. Process start and ``import timm`` are timed apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, time
t0 = time.perf_counter()
import timm  # noqa: F401
from ssnf.backbones import build_extractor
from ssnf.config import BackboneConfig
from ssnf.errors import WeightsError
t1 = time.perf_counter()
try:
    build_extractor(BackboneConfig(name="mobilenetv2_100"))
    message = "no error?"
except WeightsError as exc:
    message = str(exc)
t2 = time.perf_counter()
print(json.dumps({"imports_s": t1 - t0, "to_error_s": t2 - t1, "message": message}))
"""


def run(extra_env: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "SSNF_CACHE_DIR": cache, **extra_env}
        proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    for label, env in (("hub probe (this machine's network)", {}), ("HF_HUB_OFFLINE=1", {"HF_HUB_OFFLINE": "1"})):
        result = run(env)
        print(f"{label}: error after {result['to_error_s']:.3f} s (imports {result['imports_s']:.2f} s)")
        print(f"  ssnf: error: {result['message']}")


if __name__ == "__main__":
    main()
