"""Image classifiers given as torchvision/timm names or `module:function` entrypoints."""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from kdc.errors import UserError
from kdc.models.base import ModelAdapter
from kdc.models.device import module_device, on_device
from kdc.models.shapes import apply_shapes, tensor_shapes
from kdc.models.weights import load_into, load_state_dict
from kdc.rundir import atomic_path, write_json


def entrypoint_function(entrypoint: str) -> Callable[..., Any]:
    """The function `package.module:function` names (its module imported, it not called)."""
    mod_name, fn_name = entrypoint.split(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise _not_importable(mod_name, e) from None
    if not hasattr(module, fn_name):
        raise UserError(
            f"module '{mod_name}' has no '{fn_name}'",
            field="teacher.entrypoint",
            fix=f"name a function of {mod_name} that returns the model: '{mod_name}:FUNCTION'",
        )
    return getattr(module, fn_name)


def _not_importable(mod_name: str, e: ImportError) -> UserError:
    """The error of an entrypoint whose module does not import: the package missing (not
    installed, or not beside the config), a dependency of the module missing, or another
    failure of its import."""
    missing = getattr(e, "name", None) if isinstance(e, ModuleNotFoundError) else None
    top, where = mod_name.split(".")[0], "imported from the config's folder or PYTHONPATH"
    if missing and missing == top:
        why = f"no package '{top}' is installed or in the config's folder"
        fix = f"pip install {top}, or fix the path ('package.module:function', {where})"
    elif missing and (mod_name + ".").startswith(missing + "."):
        why, fix = f"no module '{missing}'", f"fix the module path ({where})"
    elif missing:
        why = f"it imports '{missing}', which is not installed"
        fix = f"pip install {missing.split('.')[0]}"
    else:
        why, fix = str(e), "fix the module's import error"
    return UserError(
        f"module '{mod_name}' is not importable ({why})", field="teacher.entrypoint", fix=fix
    )


def _entrypoint(source: dict) -> nn.Module:
    fn = entrypoint_function(source["entrypoint"])
    try:
        model = fn(**source.get("kwargs", {}))
    except TypeError:
        raise  # its signature does not take teacher.kwargs: said by the loader
    except Exception as e:  # the user's own code failed
        raise UserError(
            f"'{source['entrypoint']}' raised {type(e).__name__}: {e}",
            field="teacher.entrypoint",
            fix="fix the function (it is called with teacher.kwargs)",
        ) from None
    if not isinstance(model, nn.Module):
        raise UserError(
            f"'{source['entrypoint']}' returned {type(model).__name__}, not a Module",
            field="teacher.entrypoint",
            fix="return a torch.nn.Module",
        )
    return model


def _torchvision(source: dict) -> nn.Module:
    try:
        import torchvision
    except ImportError:
        raise UserError(
            "torchvision is not installed",
            field="teacher.name",
            fix="pip install torchvision matching your torch",
        ) from None
    return torchvision.models.get_model(source["name"], weights=None, **source.get("kwargs", {}))


def _timm(source: dict) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise UserError(
            "timm is not installed", field="teacher.name", fix="pip install timm"
        ) from None
    return timm.create_model(source["name"], pretrained=False, **source.get("kwargs", {}))


BUILDERS = {"entrypoint": _entrypoint, "torchvision": _torchvision, "timm": _timm}


_POSITIONAL = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.VAR_POSITIONAL,
)


def as_kdc_calls(module: nn.Module) -> nn.Module:
    """`module`, called as kdc calls image models (`module(pixel_values=x)` → a logits tensor):
    the image passed positionally where forward does not name it `pixel_values` (torchvision,
    timm: `forward(x)`), and the logits taken from a tuple, dict or ModelOutput. Hooks, so the
    module's parameter names (and weights files) stay its own."""
    params = inspect.signature(module.forward).parameters
    if "pixel_values" not in params and any(p.kind in _POSITIONAL for p in params.values()):
        module.register_forward_pre_hook(_image_positional, with_kwargs=True)
    module.register_forward_hook(_logits_only)
    return module


def _image_positional(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if "pixel_values" in kwargs:
        kwargs = dict(kwargs)
        args = (*args, kwargs.pop("pixel_values"))
    return args, kwargs


def _logits_only(module: nn.Module, args: tuple, out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    found = getattr(out, "logits", None)
    if found is None and isinstance(out, dict):
        found = out.get("logits")
    if found is None and isinstance(out, tuple | list) and out:
        found = out[0]
    if not isinstance(found, torch.Tensor):
        raise UserError(
            f"the model returned {type(out).__name__}, not a logits tensor",
            field="teacher",
            fix="return the logits (B×classes), or a tuple/dict/ModelOutput holding them first "
            "or as 'logits'",
        )
    return found


class VisionAdapter(ModelAdapter):
    """An nn.Module taking `pixel_values` (B×C×H×W float32) and returning logits."""

    family = "cnn"
    input_names = ["pixel_values"]

    def __init__(self, module: nn.Module, source: dict[str, Any]) -> None:
        self.module = module
        self.source = source

    @classmethod
    def build(cls, source: dict[str, Any], weights: Path | None) -> VisionAdapter:
        module = BUILDERS[source["kind"]](source)
        if weights is not None:
            load_into(module, load_state_dict(weights), str(weights))
        return cls(as_kdc_calls(module), source)

    def encode(
        self, features: np.ndarray, progress: Callable[[int], None] | None = None
    ) -> dict[str, np.ndarray]:
        if progress is not None:
            progress(len(features))
        return {"pixel_values": np.ascontiguousarray(features, dtype=np.float32)}

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {"pixel_values": {0: "batch"}, "logits": {0: "batch"}}

    def architecture(self) -> dict[str, Any]:
        convs = [m.out_channels for m in self.module.modules() if isinstance(m, nn.Conv2d)]
        return {
            "adapter": "vision",
            "family": "cnn",
            "conv_channels": convs,
            "params": self.params(),
        }

    def feature_modules(self) -> dict[str, nn.Module]:
        """The input of the last Linear layer is the pooled feature."""
        linears = [(n, m) for n, m in self.module.named_modules() if isinstance(m, nn.Linear)]
        return {"classifier": linears[-1][1]} if linears else {}

    def shrink(self, width: float, divisor: int, example: dict[str, np.ndarray]) -> VisionAdapter:
        """A copy with each conv's channels cut to `width` (rounded to `divisor`) by L2 magnitude
        with torch-pruning, weights kept from this model."""
        import torch_pruning as tp

        student = copy.deepcopy(self.module).eval()
        ex = torch.from_numpy(example["pixel_values"][:1])
        head = [m for m in student.modules() if isinstance(m, nn.Linear)][-1:]
        min_c = min(
            (m.out_channels for m in student.modules() if isinstance(m, nn.Conv2d)), default=divisor
        )
        pruner = tp.pruner.MetaPruner(
            student,
            ex,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=1.0 - width,
            ignored_layers=head,
            round_to=divisor if min_c * width >= divisor else None,
        )
        pruner.step()
        return VisionAdapter(student, self.source)

    def layer_trace(self, example: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """The layers of one forward pass in the `layers` form of the latency estimator's cnn
        architecture (conv, pools, linear with their input shapes), in execution order."""
        names = {m: n for n, m in self.module.named_modules()}
        layers: list[dict[str, Any]] = []

        def hook(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
            shape = list(args[0].shape[1:])
            rec = TRACE[type(mod)](mod, shape, out) if type(mod) in TRACE else None
            if rec is not None:
                layers.append({"name": names[mod], **rec})

        with _hooks(self.module, hook, tuple(TRACE)):
            self.module.eval()(**_first(example, self.module))
        return layers

    def channel_groups(self, example: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Coupled conv channels (torch-pruning dependency groups rooted at convs): per group the
        convs whose outputs share the channels, the layers that read them, and their count."""
        import torch_pruning as tp

        ex = {k: torch.from_numpy(v[:1]) for k, v in example.items()}
        dg = tp.DependencyGraph().build_dependency(self.module.eval(), example_inputs=ex)
        names = {m: n for n, m in self.module.named_modules()}
        groups = []
        for group in dg.get_all_groups(root_module_types=(nn.Conv2d,)):
            convs, readers = [], []
            for item in group:
                mod, fn = item.dep.target.module, item.dep.handler
                if not isinstance(mod, nn.Conv2d | nn.Linear):
                    continue
                if dg.is_out_channel_pruning_fn(fn) and isinstance(mod, nn.Conv2d):
                    convs.append(names[mod])
                elif dg.is_in_channel_pruning_fn(fn):
                    readers.append(names[mod])
            root = group[0].dep.target.module
            groups.append(
                {
                    "convs": list(dict.fromkeys(convs)),
                    "readers": list(dict.fromkeys(readers)),
                    "channels": int(root.out_channels),
                }
            )
        return groups

    def removable_units(self, example: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Runs of `nn.Sequential` children (a conv-bearing child plus the norm/activation children
        after it) whose output shape equals their input shape: a student may drop them."""
        shapes: dict[nn.Module, tuple[list[int], list[int]]] = {}

        def hook(mod: nn.Module, args: tuple, out: Any) -> None:
            if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                shapes.setdefault(mod, (list(args[0].shape[1:]), list(out.shape[1:])))

        with _hooks(self.module, hook, (nn.Module,)):
            self.module.eval()(**_first(example, self.module))
        units: list[dict[str, Any]] = []
        for name, seq in self.module.named_modules():
            if not isinstance(seq, nn.Sequential) or any(
                name == p or name.startswith(p + ".") for u in units for p in u["modules"]
            ):
                continue
            for run in _runs(seq):
                first, last = shapes.get(run[0][1]), shapes.get(run[-1][1])
                if first and last and first[0] == last[1] and _has_conv(run[0][1]):
                    units.append(
                        {
                            "modules": [f"{name}.{c}" if name else c for c, _ in run],
                            "out_shape": last[1],
                        }
                    )
        return units

    def sliced(self, spec: dict[str, Any], example: dict[str, np.ndarray]) -> VisionAdapter:
        """A student of `spec`: `drop` lists module paths replaced by identities (removable
        units), `channels` maps conv names to output channel counts, kept by group L2 magnitude
        (torch-pruning dependency groups, so coupled layers stay consistent)."""
        import torch_pruning as tp

        student = copy.deepcopy(self.module).eval()
        drop = list(spec.get("drop", []))
        drop_modules(student, drop)
        mods = dict(student.named_modules())
        wanted = {
            n: int(c)
            for n, c in spec.get("channels", {}).items()
            if isinstance(mods.get(n), nn.Conv2d) and int(c) < mods[n].out_channels
        }
        if wanted:
            ex = {k: torch.from_numpy(v[:1]) for k, v in example.items()}
            dg = tp.DependencyGraph().build_dependency(student, example_inputs=ex)
            importance = tp.importance.GroupMagnitudeImportance(p=2)
            for name, n in wanted.items():
                conv = mods[name]
                have = conv.out_channels
                if n >= have:  # already cut as part of an earlier coupled group
                    continue
                full = dg.get_pruning_group(conv, tp.prune_conv_out_channels, list(range(have)))
                order = torch.argsort(importance(full), stable=True)
                dg.get_pruning_group(
                    conv, tp.prune_conv_out_channels, sorted(order[: have - n].tolist())
                ).prune()
        # a teacher that is itself a kdc student has dropped blocks of its own
        drops = [*self.source.get("drop", []), *drop]
        return VisionAdapter(student, {**self.source, "drop": drops} if drops else self.source)

    def save(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / "model.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in self.module.state_dict().items()}, str(tmp))
        meta = {
            "adapter": "vision",
            "source": self.source,
            "shapes": tensor_shapes(self.module),
            "architecture": self.architecture(),
        }
        return [directory / "model.safetensors", write_json(directory / "kdc_model.json", meta)]

    @classmethod
    def load(cls, directory: Path) -> VisionAdapter:
        meta = json.loads((directory / "kdc_model.json").read_text())
        module = as_kdc_calls(BUILDERS[meta["source"]["kind"]](meta["source"]))
        drop_modules(module, meta["source"].get("drop", []))
        apply_shapes(module, meta["shapes"])
        load_into(
            module,
            load_state_dict(directory / "model.safetensors", "student"),
            str(directory),
            field="student",
        )
        return cls(module, meta["source"])


def _trace_conv(m: nn.Conv2d, shape: list[int], out: torch.Tensor) -> dict[str, Any]:
    pad = m.padding if isinstance(m.padding, tuple) else (0,)
    return {
        "op": "conv",
        "out": m.out_channels,
        "kernel": m.kernel_size[0],
        "stride": m.stride[0],
        "padding": int(pad[0]),
        "groups": m.groups,
        "in_shape": shape,
    }


def _trace_pool(m: nn.Module, shape: list[int], out: torch.Tensor) -> dict[str, Any]:
    if out.shape[-1] == 1 and out.shape[-2] == 1 and not isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
        return {"op": "global_pool", "in_shape": shape}
    k = shape[-1] // out.shape[-1]
    k, s, p = (getattr(m, a, d) for a, d in (("kernel_size", k), ("stride", k), ("padding", 0)))
    first = lambda v: int(v[0] if isinstance(v, tuple | list) else v)  # noqa: E731
    op = "maxpool" if isinstance(m, nn.MaxPool2d | nn.AdaptiveMaxPool2d) else "avgpool"
    return {
        "op": op,
        "kernel": first(k),
        "stride": first(s),
        "padding": first(p),
        "in_shape": shape,
    }


def _trace_linear(m: nn.Linear, shape: list[int], out: torch.Tensor) -> dict[str, Any]:
    return {"op": "linear", "out": m.out_features, "in_shape": [int(np.prod(shape)), 1, 1]}


TRACE = {
    nn.Conv2d: _trace_conv,
    nn.MaxPool2d: _trace_pool,
    nn.AvgPool2d: _trace_pool,
    nn.AdaptiveAvgPool2d: _trace_pool,
    nn.AdaptiveMaxPool2d: _trace_pool,
    nn.Linear: _trace_linear,
}
POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@contextlib.contextmanager
def _hooks(module: nn.Module, hook: Any, types: tuple[type, ...]) -> Iterator[None]:
    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, types)]
    try:
        with torch.inference_mode():
            yield
    finally:
        for h in handles:
            h.remove()


def _first(example: dict[str, np.ndarray], module: nn.Module) -> dict[str, torch.Tensor]:
    """The example's first row, on `module`'s device (PyTorch's meta device: a preflight's)."""
    rows = {k: torch.from_numpy(np.ascontiguousarray(v[:1])) for k, v in example.items()}
    return on_device(rows, module_device(module))


def _has_conv(mod: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in mod.modules())


def _runs(seq: nn.Sequential) -> list[list[tuple[str, nn.Module]]]:
    """Children of `seq` split so each run starts at a conv-bearing child or a pool."""
    runs: list[list[tuple[str, nn.Module]]] = []
    for name, child in seq.named_children():
        if (
            not runs
            or _has_conv(child)
            or isinstance(child, POOLS)
            or isinstance(runs[-1][-1][1], POOLS)
        ):
            runs.append([])
        runs[-1].append((name, child))
    return runs


def drop_modules(module: nn.Module, paths: list[str]) -> None:
    """Replace the submodules at `paths` with identities."""
    for path in paths:
        parent, _, leaf = path.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, leaf, nn.Identity())
