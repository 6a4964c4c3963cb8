"""What the ONNX graph rewrites (`qdq`, `qdq_gemm`, `nncf_ptq`, `fake_quant`, `onnxruntime`)
read of a graph: which tensors nodes read, constant values, and names not yet taken."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper


def node_inputs(graph: onnx.GraphProto) -> list[str]:
    """Every input name read by a node of `graph` or of its subgraphs."""
    names = []
    for n in graph.node:
        names += list(n.input)
        for a in n.attribute:
            for sub in [a.g] if a.HasField("g") else list(a.graphs):
                names += node_inputs(sub)
    return names


def reads(graph: onnx.GraphProto) -> Counter[str]:
    """How many times each tensor of `graph` is read: by a node, a subgraph's, a graph output."""
    return Counter([*node_inputs(graph), *(o.name for o in graph.output)])


def constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """The values of `graph`'s initializers (but those fed as inputs, which a caller may
    override) and Constant nodes."""
    fed = {i.name for i in graph.input}
    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name not in fed}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


class FreshNames:
    """Names no tensor or node of `graph` has: a base name, else it suffixed `_1`, `_2` …"""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.taken = {*reads(graph), *(i.name for i in graph.input)}
        self.taken |= {t.name for t in graph.initializer}
        self.taken |= {x for n in graph.node for x in (*n.output, n.name)}

    def __call__(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name
