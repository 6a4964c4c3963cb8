"""Peak resident memory of an ONNX Runtime engine, measured in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from kdc.deploy.onnxruntime import feed_for_file
from kdc.profiles import cpu_info

# The high-water mark is read from /proc/self/status (VmHWM, this process's own memory map):
# Linux carries ru_maxrss across fork + exec, so a probe started by a large parent (verify, with
# torch and the teacher loaded) would report the parent's peak instead of its own.
_PROBE = r"""
import json, resource, sys
import numpy as np, onnxruntime as ort
def hwm():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
base = hwm()
inputs = dict(np.load(sys.argv[2]))
so = ort.SessionOptions(); so.intra_op_num_threads = int(sys.argv[3])
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
names = {i.name for i in s.get_inputs()}
for _ in range(3):
    s.run(None, {k: v for k, v in inputs.items() if k in names})
peak = hwm()
print(json.dumps({"peak_rss_mb": peak / 1024, "runtime_baseline_mb": base / 1024}))
"""


def engine_peak_rss_mb(path: Path, inputs: dict[str, np.ndarray], threads: int = 1) -> dict:
    """Peak RSS of a process that loads the engine and runs `inputs` three times, and the RSS of
    the same process before the session (Python + ONNX Runtime import), in MiB (2^20 bytes)."""
    feed = feed_for_file(path, inputs)  # int64 token ids to a model's int32, as a session
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "inputs.npz"
        np.savez(npz, **feed)
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, str(path), str(npz), str(threads)],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    rec["engine_mb"] = round(rec["peak_rss_mb"] - rec["runtime_baseline_mb"], 2)
    rec["kind"] = "measured"
    rec["how"] = "VmHWM of a fresh process: session load + 3 runs at the verify batch"
    rec["device"] = cpu_info()[0]
    rec["batch"] = int(len(next(iter(feed.values())))) if feed else None
    rec["threads"] = threads
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in rec.items()}
