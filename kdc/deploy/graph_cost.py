"""Per-kernel cost of an inference graph: FLOPs, bytes moved and the fusion a deployment engine
(TensorRT, ONNX Runtime) applies, from an ONNX model (`analyze_onnx`) or straight from an
architecture dict (`kdc.deploy.arch_cost.analyze_architecture`, the fast path the search uses).

Fusion rules: shape arithmetic and anything computable from constants folds away; views
(Reshape, Squeeze, Unsqueeze, Flatten, Identity, Dropout) and Q/DQ pairs cost nothing, and an op
fed through DequantizeLinear runs at int8; a MatMul-(scale, mask)-Softmax-MatMul block with its
head transposes is one attention kernel; a decomposed LayerNorm (ReduceMean..Sub..Pow..Sqrt..Div
..Mul..Add) is one kernel; an elementwise op (bias, BatchNorm, activation, residual add) joins
the kernel that produced its latest input. Bytes = activations read and written across a kernel's
boundary plus the constants it reads, at the kernel's precision width.

The kernel types and op tables live in `kdc.deploy.kernels`, shape inference in
`kdc.deploy.onnx_shapes`, the architecture fast path in `kdc.deploy.arch_cost`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict, defaultdict
from pathlib import Path

import onnx

from kdc.deploy.kernels import (
    INTEGER_OPS,
    LN_OPS,
    MATMULS,
    OP_KIND,
    OUTPUT_SIZED_READS,
    POINTWISE,
    PROLOGUE_OPS,
    QUANTIZABLE,
    TENSOR_KINDS,
    VIEW_OPS,
    GraphCost,
    KernelShape,
    node_flops,
    node_scores,
    numel,
)
from kdc.deploy.onnx_shapes import concrete_inputs, inferred_shapes, stripped
from kdc.errors import UserError

# ---------------------------------------------------------------------------------------------
# ONNX: fusion into kernels


class _Graph:
    """Static/view/quantized classification and producer/consumer maps of one graph."""

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
        g = model.graph
        self.nodes = list(g.node)
        self.shapes = shapes
        self.static: set[str] = {t.name for t in g.initializer}
        self.alias: dict[str, str] = {}
        self.dq: set[str] = set()
        self.compute: list[int] = []
        for i, n in enumerate(self.nodes):
            ins = [x for x in n.input if x]
            if n.op_type == "DequantizeLinear" or (
                n.op_type in VIEW_OPS and ins and ins[0] in self.dq
            ):
                self.dq.update(n.output)
            if n.op_type in ("Shape", "Size") or all(x in self.static for x in ins):
                self.static.update(n.output)
            elif n.op_type in VIEW_OPS:
                self.alias[n.output[0]] = self.root(ins[0])
            else:
                self.compute.append(i)
        self.producer = {o: i for i in self.compute for o in self.nodes[i].output if o}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for i in self.compute:
            for x in dict.fromkeys(self.live_inputs(i)):
                self.consumers[x].append(i)
        for o in g.output:
            self.consumers[self.root(o.name)].append(-1)
        self.group: dict[int, int] = {}
        self.groups: list[tuple[str, list[int]]] = []

    def root(self, t: str) -> str:
        while t in self.alias:
            t = self.alias[t]
        return t

    def live_inputs(self, i: int) -> list[str]:
        """Roots of the non-constant inputs of node i."""
        return [self.root(x) for x in self.nodes[i].input if x and x not in self.static]

    def numel(self, t: str) -> float:
        s = self.shapes.get(t)
        return numel(s) if s is not None else 0.0

    def op(self, i: int) -> str:
        return self.nodes[i].op_type

    def sole_consumer(self, t: str) -> int | None:
        c = self.consumers.get(t, [])
        return c[0] if len(c) == 1 and c[0] >= 0 else None

    def add_group(self, kind: str, members: list[int]) -> None:
        gid = len(self.groups)
        self.groups.append((kind, sorted(members)))
        for m in members:
            self.group[m] = gid


def _fuse_attention(g: _Graph) -> None:
    """MatMul → (scale, mask) → Softmax → MatMul, with the head transposes around it."""
    for s in [i for i in g.compute if g.op(i) == "Softmax"]:
        if s in g.group:
            continue
        members, t, m1 = {s}, max(g.live_inputs(s), key=g.numel, default=None), None
        while t is not None and (p := g.producer.get(t)) is not None and p not in g.group:
            if g.op(p) in MATMULS:
                m1 = p
                break
            if g.op(p) not in POINTWISE:
                break
            members.add(p)
            t = max(g.live_inputs(p), key=g.numel)
        if m1 is None or len(g.live_inputs(m1)) < 2:
            continue
        t, m2 = g.root(g.nodes[s].output[0]), None
        while (c := g.sole_consumer(t)) is not None and c not in g.group:
            if g.op(c) in MATMULS and g.root(g.nodes[c].input[0]) == t:
                m2 = c
                break
            if g.op(c) not in POINTWISE:
                break
            members.add(c)
            t = g.root(g.nodes[c].output[0])
        if m2 is None:
            continue
        members |= {m1, m2}
        for t in [*g.live_inputs(m1), g.root(g.nodes[m2].input[1])]:
            while (
                (p := g.producer.get(t)) is not None
                and p not in members
                and p not in g.group
                and g.op(p) in PROLOGUE_OPS
                and len(g.live_inputs(p)) == 1
                and g.sole_consumer(t) is not None
            ):
                members.add(p)
                t = g.live_inputs(p)[0]
        c = g.sole_consumer(g.root(g.nodes[m2].output[0]))
        if c is not None and g.op(c) == "Transpose" and c not in g.group:
            members.add(c)
        g.add_group("attention", list(members))


def _fuse_layernorm(g: _Graph) -> None:
    """ReduceMean(x) → Sub(x, mean) → … → one normalisation kernel (needs two ReduceMeans)."""
    for r in [i for i in g.compute if g.op(i) == "ReduceMean"]:
        if r in g.group or not g.live_inputs(r):
            continue
        x, mean = g.live_inputs(r)[0], g.nodes[r].output[0]
        sub = next(
            (
                c
                for c in g.consumers.get(mean, [])
                if c >= 0
                and g.op(c) == "Sub"
                and set(g.live_inputs(c)) == {x, mean}
                and c not in g.group
            ),
            None,
        )
        if sub is None:
            continue
        members, changed = {r, sub}, True
        while changed:
            changed = False
            for m in list(members):
                for o in g.nodes[m].output:
                    for c in g.consumers.get(o, []):
                        if (
                            c >= 0
                            and c not in members
                            and c not in g.group
                            and g.op(c) in LN_OPS
                            and all(
                                g.producer.get(y) in members or y == x for y in g.live_inputs(c)
                            )
                        ):
                            members.add(c)
                            changed = True
        if sum(g.op(m) == "ReduceMean" for m in members) >= 2:
            g.add_group("norm", list(members))


def _fuse_rest(g: _Graph) -> None:
    """Elementwise ops join the kernel of their latest input; everything else starts one."""
    for i in g.compute:
        if i in g.group:
            continue
        prods = [p for x in g.live_inputs(i) if (p := g.producer.get(x)) is not None]
        if g.op(i) in POINTWISE and prods:
            gid = g.group[max(prods)]
            g.groups[gid][1].append(i)
            g.group[i] = gid
        else:
            g.add_group(OP_KIND.get(g.op(i), "other"), [i])


FUSION_PASSES = [_fuse_attention, _fuse_layernorm, _fuse_rest]


def _reads(g: _Graph, i: int, pos: int, name: str) -> float:
    n = g.nodes[i]
    if pos == 0 and n.op_type in OUTPUT_SIZED_READS:
        return g.numel(n.output[0])
    return g.numel(name) or g.numel(g.root(name))


def _kernel_costs(g: _Graph, inputs: list[str]) -> GraphCost:
    order = sorted(range(len(g.groups)), key=lambda j: min(g.groups[j][1]))
    pos_of = {gid: k for k, gid in enumerate(order)}
    kernels: list[KernelShape] = []
    weights: dict[str, tuple[float, bool, bool]] = {}
    lifetimes = [
        (
            g.numel(x),
            0,
            max((pos_of[g.group[u]] for u in g.consumers.get(x, []) if u >= 0), default=0),
        )
        for x in inputs
    ]
    unknown = 0
    for gid in order:
        kind, members = g.groups[gid]
        mset = set(members)
        produced = {o for m in members for o in g.nodes[m].output if o}
        flops, scores, act_in, consts, quantized = 0.0, 0.0, {}, {}, False
        for m in sorted(mset):
            n = g.nodes[m]
            outs = [g.shapes.get(o) for o in n.output]
            unknown += sum(s is None for s, o in zip(outs, n.output, strict=True) if o)
            ins = [g.shapes.get(x) if x else None for x in n.input]
            flops += node_flops(n, ins, outs)
            if kind == "attention":
                scores += node_scores(n, ins, outs)
            quantized |= n.op_type in INTEGER_OPS or (
                n.op_type in QUANTIZABLE and any(x in g.dq for x in n.input)
            )
            for p, x in enumerate(n.input):
                if x in g.static:
                    consts[x] = max(consts.get(x, 0.0), _reads(g, m, p, x))
                elif x and (r := g.root(x)) not in produced:
                    act_in[r] = max(act_in.get(r, 0.0), _reads(g, m, p, x))
        act_out = 0.0
        for o in produced:
            users = g.consumers.get(o, [])
            if any(u < 0 or u not in mset for u in users):
                act_out += g.numel(o)
                last = max(len(order) if u < 0 else pos_of[g.group[u]] for u in users)
                lifetimes.append((g.numel(o), pos_of[gid], last))
        for x in consts:
            q, tk = weights.get(x, (0.0, False, False))[1:]
            weights[x] = (g.numel(x), q or quantized, tk or kind in TENSOR_KINDS)
        first = g.nodes[min(mset)]
        kernels.append(
            KernelShape(
                first.name or first.output[0],
                tuple(g.op(m) for m in sorted(mset)),
                flops,
                sum(act_in.values()) + act_out,
                sum(consts.values()),
                kind,
                quantized,
                scores,
            )
        )
    return GraphCost(kernels, {}, weights, _peak(lifetimes, len(order)), unknown)


def _peak(lifetimes: list[tuple[float, int, int]], n: int) -> float:
    """Largest sum of tensors alive at any kernel boundary."""
    live = [0.0] * (n + 1)
    for size, start, end in lifetimes:
        for k in range(start, min(end, n) + 1):
            live[k] += size
    return max(live, default=0.0)


# ---------------------------------------------------------------------------------------------
# ONNX: public entry points with a cache keyed on graph structure

_CACHE: OrderedDict[tuple, GraphCost] = OrderedDict()
_PATH_KEYS: dict[tuple, str] = {}
_CACHE_SIZE = 64


def load_model(model_or_path: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    """An ONNX ModelProto from itself or a path (external weights are not loaded)."""
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    path = Path(model_or_path)
    if not path.is_file():
        raise UserError(
            "ONNX model not found", source=str(path), fix="pass the path of an exported model.onnx"
        )
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others
        raise UserError(
            f"not a readable ONNX model ({type(e).__name__})",
            source=str(path),
            fix="re-export the model",
        ) from None


def structure_hash(model: onnx.ModelProto) -> str:
    """A digest of the graph's structure (ops, wiring, attributes, weight shapes), not values."""
    h = hashlib.blake2b(digest_size=16)
    g = model.graph
    for op in model.opset_import:
        h.update(f"{op.domain}:{op.version};".encode())
    h.update(b"".join(n.SerializeToString() for n in g.node))
    for t in g.initializer:
        h.update(f"{t.name}:{t.data_type}:{list(t.dims)};".encode())
        if math.prod(t.dims) <= 64 and t.data_location != onnx.TensorProto.EXTERNAL:
            h.update(t.SerializeToString())
    for vi in [*g.input, *g.output]:
        h.update(vi.SerializeToString())
    return h.hexdigest()


def _model_and_key(
    model_or_path: onnx.ModelProto | str | Path,
) -> tuple[str, onnx.ModelProto | None]:
    """The structure hash and the model if it had to be loaded (a path seen before, unchanged on
    disk, is not read again)."""
    if isinstance(model_or_path, onnx.ModelProto):
        return structure_hash(model_or_path), model_or_path
    path = Path(model_or_path)
    try:
        st = path.stat()
        pkey = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        pkey = None
    if pkey in _PATH_KEYS:
        return _PATH_KEYS[pkey], None
    model = load_model(path)
    digest = structure_hash(model)
    if pkey is not None:
        _PATH_KEYS[pkey] = digest
        if len(_PATH_KEYS) > _CACHE_SIZE:
            _PATH_KEYS.pop(next(iter(_PATH_KEYS)))
    return digest, model


def analyze_onnx(
    model_or_path: onnx.ModelProto | str | Path,
    *,
    batch: int = 1,
    input_shapes: dict[str, list[int]] | None = None,
) -> GraphCost:
    """Kernels of an ONNX graph at concrete shapes (cached on structure, batch and shapes)."""
    digest, model = _model_and_key(model_or_path)
    key = (digest, int(batch), json.dumps(input_shapes or {}, sort_keys=True))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    model = model if model is not None else load_model(model_or_path)
    shapes = concrete_inputs(model, batch, input_shapes)
    try:
        tensor_shapes = inferred_shapes(stripped(model, shapes))
    except Exception as e:  # onnx's InferenceError and checker errors
        raise UserError(
            f"shape inference failed: {str(e).splitlines()[0][:200]}",
            source=str(model_or_path) if not isinstance(model_or_path, onnx.ModelProto) else None,
            fix="check input_shapes against the model's inputs",
        ) from None
    g = _Graph(model, tensor_shapes)
    for fuse in FUSION_PASSES:
        fuse(g)
    cost = _kernel_costs(g, list(shapes))
    cost.input_shapes = shapes
    _CACHE[key] = cost
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return cost
