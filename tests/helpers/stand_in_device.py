"""A stand-in TensorRT device for device-bundle tests: a tiny ONNX model (logits = x @ W),
TensorRT Python API and libcudart stand-ins that run it, and a bundle writer with test
defaults. The fixtures using them (goldens, fake_device, trt_python) are in
tests/deploy/conftest.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kdc.deploy.bundle import write_bundle
from kdc.profiles import HardwareProfile, load_profile


def tiny_model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(8, 3)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def make_bundle(
    tmp_path: Path,
    goldens: tuple,
    profile: str | HardwareProfile = "jetson-orin-nano-8gb",
    precision: str = "fp16",
    name: str = "bundle",
    input_shapes: dict[str, list[int]] | None = None,
    **over,
) -> Path:
    """`write_bundle` of the goldens' model to `tmp_path / name`, for batches of 2 rows unless
    `input_shapes` says otherwise."""
    model, inputs, outputs = goldens
    prof = profile if not isinstance(profile, str) else load_profile(profile)
    return write_bundle(
        tmp_path / name,
        model,
        prof,
        precision=precision,
        input_shapes=input_shapes or {"x": [2, 8]},
        golden_inputs=inputs,
        golden_outputs=outputs,
        **over,
    )


FAKE_CUDART = r"""
#include <stdlib.h>
#include <string.h>
int cudaMalloc(void **p, size_t n) { *p = malloc(n); return *p ? 0 : 2; }
int cudaMemcpy(void *d, const void *s, size_t n, int kind) { memcpy(d, s, n); return 0; }
int cudaFree(void *p) { free(p); return 0; }
int cudaStreamCreate(void **s) { *s = (void *)0x1; return 0; }
int cudaStreamSynchronize(void *s) { return 0; }
int cudaStreamDestroy(void *s) { return 0; }
"""

# The TensorRT API parity.py uses; "device" memory is host memory (see FAKE_CUDART), and the
# engine computes the bundle model's logits = x @ W from the buffers at the addresses it is given.
FAKE_TENSORRT = """
import ctypes
import numpy as np

W = np.load(__file__.replace("__init__.py", "W.npy"))


class Logger:
    WARNING = 2

    def __init__(self, level):
        pass


class TensorIOMode:
    INPUT, OUTPUT = 0, 1


def nptype(dtype):
    return np.float32


class Context:
    def __init__(self):
        self.addr, self.shape = {}, {}

    def set_input_shape(self, name, shape):
        self.shape[name] = shape

    def get_tensor_shape(self, name):
        return (self.shape["x"][0], W.shape[1])

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr

    def execute_async_v3(self, stream):
        rows, cols = self.shape["x"]
        buf = (ctypes.c_float * (rows * cols)).from_address(self.addr["x"])
        y = np.ctypeslib.as_array(buf).reshape(rows, cols) @ W
        y = np.ascontiguousarray(y, dtype=np.float32)
        ctypes.memmove(self.addr["logits"], y.ctypes.data, y.nbytes)
        return True


class Engine:
    num_io_tensors = 2

    def get_tensor_name(self, i):
        return ["x", "logits"][i]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if name == "x" else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return "float32"

    def create_execution_context(self):
        return Context()


class Runtime:
    def __init__(self, logger):
        pass

    def deserialize_cuda_engine(self, data):
        return Engine() if data == b"ENGINE" else None
"""
