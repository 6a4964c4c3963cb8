"""Search spaces derived from the teacher: every candidate is a shrunken teacher that
`derive_student` can initialise from the teacher's weights.

A candidate is a gene assignment decoded into an adapter-style `architecture`, a `spec` (the init
recipe: which teacher layers, which channel/head/FFN slices) and a `cost` dict for the latency
estimator. Transformers vary layers, (hidden size, heads) pairs and FFN size; CNNs vary a width
multiplier per stage (stages split at each change of resolution) and how many removable blocks
each stage keeps. Sizes are multiples of the target's channel divisor (the teacher's own sizes
are always allowed, so the teacher itself is in the space).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from typing import Any

import numpy as np
from torch import nn

from kdc.compress.student import evenly_spaced
from kdc.errors import UserError
from kdc.models.base import ModelAdapter

HEAD_DIMS = (32, 64)  # attention head sizes that map well onto tensor cores / SIMD
# a transformer student's sizes (`student.architecture`'s keys), as config.json names them
TRANSFORMER_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")
WIDTH_STEPS = 8  # CNN width multipliers k/8 and FFN sizes k/8 of the teacher's
# a head-pruned teacher's architecture keys (`hf.attention_sizes`), which a student of another
# width (all its heads, hidden size / head size) does not have
PRUNED_HEAD_KEYS = ("attention_head_size", "layer_heads")


@dataclass(frozen=True)
class Candidate:
    genes: dict[str, Any]
    architecture: dict[str, Any]  # like the built student's `architecture()`, without params
    spec: dict[str, Any]  # init recipe for `derive_student`
    cost: dict[str, Any]  # architecture dict for `estimate.predict_architecture`
    label: str = ""

    @property
    def key(self) -> str:
        return json.dumps(self.genes, sort_keys=True)


class Space:
    """Genes (name → choices, smallest first); subclasses decode genes into candidates."""

    def __init__(self, dims: dict[str, list[Any]]) -> None:
        self.dims = {k: list(v) for k, v in dims.items() if v}
        self.teacher_genes = self.largest()  # the teacher's own, kept when `restrict` narrows

    def size_genes(self) -> dict[str, list[tuple[str, Callable[[Any], float]]]]:
        """`student.architecture` key → the genes it sizes, each with how to read that size off
        a gene value (what `search.space` can narrow)."""
        return {}

    def restrict(self, limits: dict[str, Any]) -> None:
        """Keep only the gene values whose sizes `limits` (`search.space`: key → list of allowed
        values or a range with `min`/`max`) admit; a UserError naming the key when a key is
        unknown or leaves no choice."""
        keys = self.size_genes()
        for key, allowed in limits.items():
            if key not in keys:
                raise unknown_space_key(key, list(keys))
            for gene, size in keys[key]:
                kept = [v for v in self.dims[gene] if _admits(allowed, size(v))]
                if not kept:
                    sizes = sorted({size(v) for v in self.dims[gene]})
                    which = f" of {gene}" if gene.startswith("stage") else ""
                    raise UserError(
                        f"search.space.{key} {_shown(allowed)} admits none of the sizes{which} "
                        f"{', '.join(f'{x:.4g}' for x in sizes)}",
                        field=f"search.space.{key}",
                        fix="admit at least one of those sizes",
                    )
                self.dims[gene] = kept

    def decode(self, genes: dict[str, Any]) -> Candidate:
        return Candidate(dict(genes), dict(genes), {}, {}, json.dumps(genes))

    def input_shapes(self, batch: int) -> dict[str, list[int]]:
        return {}

    @property
    def size(self) -> int:
        return reduce(lambda a, b: a * b, (len(v) for v in self.dims.values()), 1)

    def sample(self, rng: random.Random) -> dict[str, Any]:
        return {k: rng.choice(v) for k, v in self.dims.items()}

    def mutate(self, genes: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        """A copy with one gene (of those with a choice) set to another of its values."""
        free = [k for k, v in self.dims.items() if len(v) > 1]
        if not free:
            return dict(genes)
        k = rng.choice(free)
        return {**genes, k: rng.choice([v for v in self.dims[k] if v != genes.get(k)])}

    def smallest(self) -> dict[str, Any]:
        return {k: v[0] for k, v in self.dims.items()}

    def largest(self) -> dict[str, Any]:
        return {k: v[-1] for k, v in self.dims.items()}

    def from_architecture(self, arch: dict[str, Any]) -> dict[str, Any]:
        raise UserError(
            "this space takes no fixed architecture",
            field="student.architecture",
            fix="remove student.architecture",
        )


# the sizes `search.space` can narrow, per teacher family (a CNN's stage_depth only where a stage
# has removable blocks)
SPACE_KEYS = {"transformer": TRANSFORMER_KEYS, "cnn": ("stage_width", "stage_depth")}


def unknown_space_key(key: str, keys: list[str]) -> UserError:
    """The error for a `search.space` key that is none of `keys`."""
    return UserError(
        f"search.space has {key!r}, which is not a size of this teacher's students",
        field=f"search.space.{key}",
        fix=f"use {', '.join(keys) or 'nothing (this space takes no limits)'}",
    )


def _admits(allowed: Any, size: float) -> bool:
    """Whether a `search.space` entry (a list of values or a range with min/max) admits `size`."""
    if isinstance(allowed, list):  # as the error shows sizes: 4 significant digits
        return any(math.isclose(size, a, rel_tol=5e-4) for a in allowed)
    lo, hi = allowed.min, allowed.max
    return (lo is None or size >= lo * (1 - 5e-4)) and (hi is None or size <= hi * (1 + 5e-4))


def _shown(allowed: Any) -> str:
    if isinstance(allowed, list):
        return "[" + ", ".join(f"{a:g}" for a in allowed) + "]"
    ends = {"min": allowed.min, "max": allowed.max}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in ends.items() if v is not None) + "}"


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _whole(v: Any) -> bool:
    return _number(v) and float(v).is_integer()


def round_channels(c: int, mult: float, divisor: int) -> int:
    """`c × mult` rounded half-up to a multiple of `divisor`, at least `divisor`, at most `c`
    (layers narrower than the divisor keep their size)."""
    if c <= divisor:
        return c
    return min(c, max(divisor, int(math.floor(c * mult / divisor + 0.5)) * divisor))


class TransformerSpace(Space):
    """Layers (evenly spaced teacher layers), (hidden, heads) with head dim 32/64 or the
    teacher's, FFN size; hidden and FFN on multiples of the divisor."""

    def __init__(self, teacher: ModelAdapter, divisor: int, cls_only: bool = False) -> None:
        from kdc.export.cls_only import supports_cls_only
        from kdc.models.hf import INTERMEDIATE_KEYS
        from kdc.models.pruned_config import attention_widths

        self.cls_only = cls_only and supports_cls_only(teacher)  # as the export will do

        arch = {k: v for k, v in teacher.architecture().items() if k != "params"}
        conf = teacher.config
        self.teacher_arch = arch
        self.n_layers, self.hidden = arch["num_hidden_layers"], arch["hidden_size"]
        # a config stating the teacher (pruned_config) has hidden size / head size heads, those
        # its layers lost (pruned_heads) included; students as wide as it keep them, narrower
        # ones fit in the attention dims its narrowest layer kept
        stated = conf.hidden_size == self.hidden
        self.heads = conf.num_attention_heads if stated else arch["num_attention_heads"]
        # each layer's live heads, of head_size dims, which students of its width keep
        self.layer_heads = arch.get("layer_heads") or [arch["num_attention_heads"]] * self.n_layers
        self.head_size = arch.get("attention_head_size") or self.hidden // self.heads
        self.inter = next(getattr(conf, k) for k in INTERMEDIATE_KEYS if hasattr(conf, k))
        self.max_length = arch.get("max_length")  # text; a vision transformer has image_size
        head_dims = sorted({*HEAD_DIMS, self.hidden // self.heads})
        narrowest = min(attention_widths(teacher.model), default=self.hidden)  # type: ignore[attr-defined]
        widths = {
            (h * n, n)
            for h in head_dims
            for n in range(1, narrowest // h + 1)
            if (h * n) % divisor == 0
        } | {(self.hidden, self.heads)}
        inters = {
            round_channels(self.inter, k / WIDTH_STEPS, divisor) for k in range(1, WIDTH_STEPS + 1)
        } | {self.inter}
        super().__init__(
            {
                "num_hidden_layers": list(range(1, self.n_layers + 1)),
                "width": [list(w) for w in sorted(widths)],
                "intermediate_size": sorted(inters),
            }
        )
        # not largest(): a hidden size splits into heads of 32 and of 64, the teacher's one way
        self.teacher_genes = self.from_architecture({})

    def size_genes(self) -> dict[str, list[tuple[str, Callable[[Any], float]]]]:
        return {
            "num_hidden_layers": [("num_hidden_layers", float)],
            "hidden_size": [("width", lambda w: float(w[0]))],
            "num_attention_heads": [("width", lambda w: float(w[1]))],
            "intermediate_size": [("intermediate_size", float)],
        }

    def decode(self, genes: dict[str, Any]) -> Candidate:
        from kdc.models.hf import attention_sizes

        n = int(genes["num_hidden_layers"])
        hidden, heads = (int(x) for x in genes["width"])
        inter = int(genes["intermediate_size"])
        sizes = {
            "num_hidden_layers": n,
            "hidden_size": hidden,
            "num_attention_heads": heads,
            "intermediate_size": inter,
        }
        layers = evenly_spaced(self.n_layers, n)
        arch = {k: v for k, v in self.teacher_arch.items() if k not in PRUNED_HEAD_KEYS}
        arch |= sizes
        if (hidden, heads) == (self.hidden, self.heads):  # the teacher's pruned heads kept
            arch |= attention_sizes(
                [self.layer_heads[i] for i in layers], self.head_size, self.hidden
            )
        spec = {
            "family": "transformer",
            "layers": layers,
            **{k: v for k, v in sizes.items() if k != "num_hidden_layers"},
        }
        cost = {**arch, "cls_only_last_layer": self.cls_only}
        return Candidate(dict(genes), arch, spec, cost, f"L{n} H{hidden} A{heads} I{inter}")

    def input_shapes(self, batch: int) -> dict[str, list[int]]:
        a = self.teacher_arch
        if "image_size" in a:
            return {"pixel_values": [batch, a["num_channels"], a["image_size"], a["image_size"]]}
        return {"input_ids": [batch, self.max_length], "attention_mask": [batch, self.max_length]}

    def from_architecture(self, arch: dict[str, Any]) -> dict[str, Any]:
        return transformer_genes(arch, self.n_layers, self.hidden, self.heads, self.inter)


def transformer_genes(
    arch: dict[str, Any], n_layers: int, hidden: int, heads: int, inter: int
) -> dict[str, Any]:
    """The genes of `student.architecture` `arch` for a teacher of these sizes (omitted keys keep
    the teacher's; heads default to the teacher's head size); a UserError naming the field for
    unknown keys, sizes that are not whole numbers, beyond the teacher's, or a hidden size that
    the heads do not divide."""
    unfit = UserError(
        f"{arch} is not a student of this {n_layers}-layer, {hidden}-wide teacher",
        field="student.architecture",
        fix=f"use whole numbers: num_hidden_layers <= {n_layers}, hidden_size <= "
        f"{hidden} divisible by num_attention_heads, intermediate_size <= {inter}",
    )
    unknown = [k for k in arch if k not in TRANSFORMER_KEYS]
    if unknown:
        where = (
            " (which teacher layers to keep goes in student.layers)" if "layers" in unknown else ""
        )
        raise UserError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in a transformer's "
            f"student.architecture{where}",
            field="student.architecture",
            fix=f"use only {', '.join(TRANSFORMER_KEYS)}",
        )
    if not all(_whole(arch[k]) for k in TRANSFORMER_KEYS if k in arch):
        raise unfit
    n = int(arch.get("num_hidden_layers", n_layers))
    width = int(arch.get("hidden_size", hidden))
    n_heads = int(arch.get("num_attention_heads", max(1, width // (hidden // heads))))
    ffn = int(arch.get("intermediate_size", inter))
    if (
        not 1 <= n <= n_layers
        or not 1 <= width <= hidden
        or n_heads < 1
        or width % n_heads
        or not 1 <= ffn <= inter
    ):
        raise unfit
    return {"num_hidden_layers": n, "width": [width, n_heads], "intermediate_size": ffn}


class CnnSpace(Space):
    """A width multiplier per stage and, where a stage has removable blocks, how many it keeps
    (the first ones). Channels follow torch-pruning's coupled groups, so residual nets stay
    consistent."""

    def __init__(self, teacher: ModelAdapter, example: dict[str, np.ndarray], divisor: int) -> None:
        self.trace = teacher.layer_trace(example)
        out_res = conv_resolutions(self.trace)
        # a group none of whose convs runs in eval (an auxiliary training head) is not searched:
        # it is not in the exported graph, and slicing keeps it consistent with what it reads
        self.groups = [
            g for g in teacher.channel_groups(example) if any(c in out_res for c in g["convs"])
        ]
        self.divisor = divisor
        self.input_shape = list(example["pixel_values"].shape[1:])
        convs = [(n, m) for n, m in teacher.module.named_modules() if isinstance(m, nn.Conv2d)]
        self.conv_order = [n for n, _ in convs]
        self.teacher_out = {n: m.out_channels for n, m in convs}
        self.conv_group = {c: i for i, g in enumerate(self.groups) for c in g["convs"]}
        self.reader_group = {r: i for i, g in enumerate(self.groups) for r in g["readers"]}
        self.stages = list(dict.fromkeys(out_res.values()))
        self.group_stage = [
            self.stages.index(next(out_res[c] for c in g["convs"] if c in out_res))
            for g in self.groups
        ]
        self.units = stage_units(teacher, example, self.stages)
        dims: dict[str, list[Any]] = {}
        for s in range(len(self.stages)):
            bases = [
                g["channels"]
                for g, gs in zip(self.groups, self.group_stage, strict=True)
                if gs == s
            ]
            chans = {self._stage_channels(s, k / WIDTH_STEPS) for k in range(1, WIDTH_STEPS + 1)}
            if bases:  # a stage whose convs all follow another stage's channels has no width
                dims[f"stage{s}_width"] = sorted({c[0] / bases[0] for c in chans})
            if self.units[s]:
                dims[f"stage{s}_depth"] = list(range(len(self.units[s]) + 1))
        super().__init__(dims)

    def size_genes(self) -> dict[str, list[tuple[str, Callable[[Any], float]]]]:
        keys = {
            kind: [(g, float) for g in self.dims if g.endswith(f"_{kind[6:]}")]
            for kind in SPACE_KEYS["cnn"]
        }
        return {k: genes for k, genes in keys.items() if genes}

    def _stage_channels(self, stage: int, mult: float) -> tuple[int, ...]:
        return tuple(
            round_channels(g["channels"], mult, self.divisor)
            for g, s in zip(self.groups, self.group_stage, strict=True)
            if s == stage
        )

    def decode(self, genes: dict[str, Any]) -> Candidate:
        mults = [float(genes.get(f"stage{s}_width", 1.0)) for s in range(len(self.stages))]
        new = [
            round_channels(g["channels"], mults[s], self.divisor)
            for g, s in zip(self.groups, self.group_stage, strict=True)
        ]
        drop = [
            p
            for s, units in enumerate(self.units)
            for unit in units[int(genes.get(f"stage{s}_depth", len(units))) :]
            for p in unit
        ]
        gone = lambda n: any(n == p or n.startswith(p + ".") for p in drop)  # noqa: E731
        out = {c: new[self.conv_group[c]] for c in self.conv_order if c in self.conv_group}
        layers: list[dict[str, Any]] = []
        kept: list[tuple[int, float]] = []  # (teacher out, new/teacher) of convs so far
        for rec in self.trace:
            if gone(rec["name"]):
                continue
            rec = {**rec, "in_shape": list(rec["in_shape"])}
            c_in = rec["in_shape"][0]
            g = self.reader_group.get(rec["name"])
            # readers of a coupled group follow it; pools follow the latest conv of their width
            ratio = (
                new[g] / self.groups[g]["channels"]
                if g is not None
                else next((r for t, r in reversed(kept) if t == c_in), 1.0)
            )
            rec["in_shape"][0] = int(round(c_in * ratio))
            if rec["op"] == "conv":
                if rec["groups"] > 1 and rec["groups"] == c_in:
                    rec["groups"] = rec["in_shape"][0]
                kept.append((rec["out"], out.get(rec["name"], rec["out"]) / rec["out"]))
                rec["out"] = out.get(rec["name"], rec["out"])
            layers.append(rec)
        conv_channels = [out.get(c, self.teacher_out[c]) for c in self.conv_order if not gone(c)]
        arch = {"adapter": "vision", "family": "cnn", "conv_channels": conv_channels}
        spec = {
            "family": "cnn",
            "channels": {c: n for c, n in out.items() if n < self.teacher_out[c]},
            "drop": drop,
        }
        cost = {"family": "cnn", "input_shape": self.input_shape, "layers": layers}
        return Candidate(dict(genes), arch, spec, cost, f"conv {conv_channels}")

    def input_shapes(self, batch: int) -> dict[str, list[int]]:
        return {"pixel_values": [batch, *self.input_shape]}

    def from_architecture(self, arch: dict[str, Any]) -> dict[str, Any]:
        return cnn_genes(arch, [len(u) for u in self.units])


def cnn_genes(arch: dict[str, Any], blocks: list[int]) -> dict[str, Any]:
    """The genes of `student.architecture` `arch` for a CNN teacher whose stages hold `blocks`
    removable blocks each; a UserError naming the field for unknown keys, or a stage_width or
    stage_depth that is not one value per stage within the teacher's."""
    widths = arch.get("stage_width", [1.0] * len(blocks))
    depths = arch.get("stage_depth", blocks)
    if (
        set(arch) - {"stage_width", "stage_depth"}
        or not isinstance(widths, list)
        or not isinstance(depths, list)
        or not all(_number(w) for w in widths)
        or not all(_whole(d) for d in depths)
        or len(widths) != len(blocks)
        or len(depths) != len(blocks)
        or not all(0 < w <= 1 for w in widths)
        or not all(0 <= d <= n for d, n in zip(depths, blocks, strict=True))
    ):
        depth = (
            f"stage_depth: how many of its removable blocks each stage keeps, at most {blocks}"
            + (" (a 0 there: that stage has none)" if 0 in blocks else "")
            if any(blocks)
            else "leave out stage_depth: no stage of this teacher has a block kdc can remove (a "
            "conv block in an nn.Sequential whose output shape equals its input's)"
        )
        raise UserError(
            f"{arch} does not fit this teacher's {len(blocks)} stages",
            field="student.architecture",
            fix=f"give stage_width: {len(blocks)} multipliers in (0, 1] and {depth}",
        )
    genes: dict[str, Any] = {f"stage{s}_width": float(w) for s, w in enumerate(widths)}
    genes.update({f"stage{s}_depth": int(d) for s, d in enumerate(depths) if blocks[s]})
    return genes


def conv_resolutions(trace: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """The output resolution of each conv of a `layer_trace`, by name, in execution order."""
    return {r["name"]: _out_res(r) for r in trace if r["op"] == "conv"}


def stage_units(
    teacher: ModelAdapter, example: dict[str, np.ndarray], stages: list[tuple[int, int]]
) -> list[list[list[str]]]:
    """Per stage (a resolution its convs output at), the module paths of each of the teacher's
    `removable_units` there."""
    units: list[list[list[str]]] = [[] for _ in stages]
    for u in teacher.removable_units(example):
        res = tuple(u["out_shape"][1:])
        if res in stages:
            units[stages.index(res)].append(u["modules"])
    return units


def removable_blocks(module: nn.Module, shape: tuple[int, ...]) -> list[int]:
    """How many removable blocks each stage of a CNN holds (`stage_depth`'s maxima), traced on
    inputs of `shape` (N×C×H×W; on the module's device, PyTorch's meta device included)."""
    from kdc.models.vision import VisionAdapter

    teacher = VisionAdapter(module, {})
    example = {"pixel_values": np.zeros((1, *shape[1:]), np.float32)}
    stages = list(dict.fromkeys(conv_resolutions(teacher.layer_trace(example)).values()))
    return [len(u) for u in stage_units(teacher, example, stages)]


def _out_res(rec: dict[str, Any]) -> tuple[int, int]:
    k, s, p = rec["kernel"], rec["stride"], rec["padding"]
    return tuple((x + 2 * p - k) // s + 1 for x in rec["in_shape"][1:])  # type: ignore[return-value]


SPACES = {
    "transformer": lambda t, ex, d, cls_only: TransformerSpace(t, d, cls_only),
    "cnn": lambda t, ex, d, cls_only: CnnSpace(t, ex, d),
}


def space_for(
    teacher: ModelAdapter, example: dict[str, np.ndarray], divisor: int, cls_only: bool = False
) -> Space:
    """The search space of students of `teacher` on a target with this channel divisor;
    `cls_only`: latency is predicted for exports whose last layer computes only [CLS]."""
    return SPACES[teacher.family](teacher, example, divisor, cls_only)
