"""Generated malformed configs (hypothesis): a wrong value, an unknown key or a missing field
anywhere in the schema, and arbitrary bytes as model.yaml, each end as one line naming
model.yaml and the field, exit 2, before a run directory exists. `config_mutations()` is also
what bench/reliability.py runs with `--generated`."""

from __future__ import annotations

import tempfile
import types
import typing
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from malformed import FAST, assert_clean_failure, compress, private_tmp, run_case, yaml_file
from pydantic import BaseModel, ValidationError
from tiny import cnn_config

from kdc.config import KdcConfig

JUNK = "qwxzk"  # letters that spell no YAML/pydantic boolean
__all__ = ["config_mutations", "private_tmp"]  # the fixture, imported for pytest to find


def _leaves(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Dotted path -> pydantic FieldInfo of every leaf of the config schema."""
    out = {}
    for name, f in model.model_fields.items():
        if f.exclude:
            continue
        sub = next(
            (
                a
                for a in (f.annotation, *typing.get_args(f.annotation))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
        if sub is not None:
            out.update(_leaves(sub, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = f
    return out


LEAVES = _leaves(KdcConfig)
SECTIONS = ["", *sorted({p.rpartition(".")[0] for p in LEAVES if "." in p})]


def _base_types(ann: Any) -> set:
    args = typing.get_args(ann)
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        return set().union(*(_base_types(a) for a in args)) - {type(None)}
    return {typing.get_origin(ann) or ann}


def bad_values(field: Any) -> st.SearchStrategy:
    """Values of the wrong type or outside the bounds for a schema leaf."""
    kinds = _base_types(field.annotation)
    junk_text = st.text(JUNK, min_size=3, max_size=8)
    opts = [st.lists(st.integers(), min_size=1, max_size=3).map(lambda v: [v])]  # nested list
    if dict not in kinds:
        opts.append(st.dictionaries(junk_text, st.integers(), min_size=1, max_size=2))
    if kinds & {int, float, bool, typing.Literal}:
        opts.append(junk_text)
    if kinds == {str}:
        opts.append(st.integers() | st.floats(allow_nan=False))
    if kinds & {dict, list}:
        opts.append(st.integers())
    for m in field.metadata:
        for attr, shift in (("ge", -1), ("gt", 0), ("le", 1), ("lt", 0)):
            bound = getattr(m, attr, None)
            if bound is not None:
                opts.append(st.just(bound + shift))
    return st.one_of(opts)


def _set(cfg: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for p in parents:
        cfg = cfg.setdefault(p, {})
    cfg[last] = value


def _invalid(cfg: dict) -> bool:
    try:
        KdcConfig.model_validate(cfg)
    except ValidationError:
        return True
    return False


@st.composite
def config_mutations(draw) -> tuple[Any, str, str]:
    """(a broken config document, the field its error must name, the kind of breakage)."""
    cfg = cnn_config(weights=None, **FAST)
    kind = draw(st.sampled_from(["wrong value"] * 6 + ["unknown key"] * 2 + ["missing"]))
    if kind == "wrong value":
        path = draw(st.sampled_from(sorted(LEAVES)))
        _set(cfg, path, draw(bad_values(LEAVES[path])))
    elif kind == "unknown key":
        section = draw(st.sampled_from(SECTIONS))
        key = draw(st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True))
        path = f"{section}.{key}".lstrip(".")
        assume(path not in LEAVES and path not in SECTIONS)
        _set(cfg, path, draw(st.integers() | st.text(max_size=5)))
    else:
        path = draw(st.sampled_from(["name", "task", "teacher", "data", "data.source"]))
        *parents, last = path.split(".")
        target = cfg
        for p in parents:
            target = target[p]
        target.pop(last)
    assume(_invalid(cfg))
    return cfg, path, kind


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(config_mutations())
def test_generated_bad_configs(tmp_path_factory, private_tmp, mutation):
    cfg, field, _ = mutation
    root = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    o = run_case(compress(yaml_file(root / "model.yaml", cfg)), root)
    assert_clean_failure(o, 2, "model.yaml", f"'{field}")
    assert not (root / "run").exists()  # failed before creating anything


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_arbitrary_bytes_as_config(tmp_path_factory, private_tmp, content):
    root = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    (root / "model.yaml").write_bytes(content)
    o = run_case(compress(root / "model.yaml"), root)
    assert_clean_failure(o, 2, "model.yaml")
