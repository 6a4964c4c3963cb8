"""Profiles: built-ins, aliases, host detection, errors, and loading from an installed wheel."""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from kdc.errors import UserError
from kdc.profiles import list_profiles, load_profile

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {
    "jetson-orin-nano-8gb",
    "jetson-orin-nx-16gb",
    "jetson-agx-orin-64gb",
    "nvidia-t4",
    "nvidia-a10",
    "nvidia-l4",
    "nvidia-a100-80gb-sxm",
    "nvidia-h100-sxm",
    "host",
}


def test_every_target_is_there_with_sources():
    profiles = {p.name: p for p in list_profiles()}
    assert set(profiles) >= EXPECTED
    for p in profiles.values():
        assert p.compute.source and p.memory.source and p.latency_model.source


def test_aliases():
    assert load_profile("jetson").name == "jetson-orin-nano-8gb"
    assert load_profile("t4").name == "nvidia-t4"
    assert load_profile("cpu").name == "host"


def test_host_is_measurable_and_read_from_machine():
    host = load_profile("host")
    assert host.measurable and host.kind == "cpu" and "thread" in host.description
    assert not load_profile("jetson").measurable


def test_unknown_target_lists_names():
    said = r"unknown target 'jetsn' \(did you mean 'jetson'\?\).*jetson-orin-nano-8gb"
    with pytest.raises(UserError, match=said):
        load_profile("jetsn")


def test_profile_from_path_and_bad_file(tmp_path):
    src = (ROOT / "profiles" / "nvidia-t4.yaml").read_text()
    (tmp_path / "mine.yaml").write_text(src.replace("name: nvidia-t4", "name: my-t4"))
    assert load_profile(str(tmp_path / "mine.yaml")).name == "my-t4"
    (tmp_path / "bad.yaml").write_text(src.replace("fp32_tflops: 8.1", "fp32_tflops: -1"))
    with pytest.raises(UserError, match="compute.fp32_tflops"):
        load_profile(str(tmp_path / "bad.yaml"))
    (tmp_path / "typo.yaml").write_text(src.replace("bandwidth_gbps:", "bandwith_gbps:"))
    with pytest.raises(UserError, match="bandwith_gbps") as e:  # not 'bandwidth_gbps missing'
        load_profile(str(tmp_path / "typo.yaml"))
    assert e.value.fix == "did you mean 'bandwidth_gbps'?"


def test_profile_not_utf8_or_with_empty_lists_is_a_user_error(tmp_path):
    src = (ROOT / "profiles" / "nvidia-t4.yaml").read_text()
    for codec in ("utf-16", "latin-1"):
        path = tmp_path / f"{codec}.yaml"
        path.write_bytes(src.replace("NVIDIA T4", "NVIDIA T4 \xe9").encode(codec))
        with pytest.raises(UserError, match="not UTF-8") as e:
            load_profile(str(path))
        assert str(path) in str(e.value) and "UTF-8" in e.value.fix
    for key in ("engines", "precisions"):
        doc = yaml.safe_load(src)
        doc["runtime"][key] = []
        (tmp_path / "empty.yaml").write_text(yaml.safe_dump(doc))
        with pytest.raises(UserError, match=f"runtime.{key}.*at least 1 item"):
            load_profile(str(tmp_path / "empty.yaml"))


@pytest.mark.slow
def test_profiles_found_from_installed_wheel(tmp_path):
    """Build the wheel, install it into a fresh venv (no deps) and list profiles from outside."""
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(dist.glob("kdc-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "--no-deps", "--force-reinstall", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "import kdc.profiles as p; d = p.profiles_dir(); "
        "print(d); print(p.load_profile('jetson').name)"
    )
    out = subprocess.run(
        [str(py), "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path
    ).stdout.split()
    assert "site-packages" in out[0] and out[0].endswith("_profiles")
    assert out[1] == "jetson-orin-nano-8gb"


def test_an_arm_board_is_named_by_its_device_tree_model():
    """A Jetson's /proc/cpuinfo has no model name: timings done there were labelled 'aarch64'."""
    from kdc.cpu_flags import parse_cpuinfo

    model, flags = parse_cpuinfo(
        "processor\t: 0\nFeatures\t: fp asimd asimddp\n", "NVIDIA Jetson Orin Nano Developer Kit\0"
    )
    assert model.startswith("NVIDIA Jetson Orin Nano Developer Kit (") and "asimddp" in flags
    assert parse_cpuinfo("model name\t: Intel(R) Xeon(R)\nflags\t: avx2\n")[0] == "Intel(R) Xeon(R)"


def test_a_profile_copied_from_an_earlier_kdc_still_loads(tmp_path):
    """Shipped profiles listed runtime.onnxruntime_providers until kdc stopped reading it; a
    user's copy of one (README: 'copy one') is not refused for it."""
    import yaml

    from kdc.profiles import load_profile, profiles_dir

    raw = yaml.safe_load((profiles_dir() / "nvidia-t4.yaml").read_text())
    raw["runtime"]["onnxruntime_providers"] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(raw))
    assert load_profile(str(tmp_path / "mine.yaml")).name == "nvidia-t4"  # a copy: that profile
    raw["memory"]["bandwidth_gbps"] = 300.0  # changed under the shipped name: it would share
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(raw))  # nvidia-t4's calibration file
    with pytest.raises(UserError, match="name 'nvidia-t4' is a shipped profile's") as e:
        load_profile(str(tmp_path / "mine.yaml"))
    assert e.value.field == "name" and e.value.source == str(tmp_path / "mine.yaml")
    raw["name"] = "my-t4"
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(raw))
    assert load_profile(str(tmp_path / "mine.yaml")).runtime.engines == raw["runtime"]["engines"]
    raw["memory"]["bandwidth_gbps"] = 3.2e11  # written in B/s: refused, not 10^9 times too fast
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError) as e:
        load_profile(str(tmp_path / "mine.yaml"))
    assert e.value.field == "memory.bandwidth_gbps"
    raw["memory"]["bandwidth_gbps"], raw["defaults"]["max_memory_mb"] = 320.0, 99999
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="max_memory_mb 99999 is more than the device's memory"):
        load_profile(str(tmp_path / "mine.yaml"))


def test_a_tensorrt_profile_without_its_version_is_refused_when_loaded(tmp_path):
    """Without runtime.tensorrt a run stopped at build, after distillation, on a message that
    named --target and told to bundle for a TensorRT target."""
    doc = yaml.safe_load((ROOT / "profiles" / "nvidia-t4.yaml").read_text())
    doc["name"] = "t4-custom"
    del doc["runtime"]["tensorrt"]
    path = tmp_path / "t4-custom.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match=r"field 'runtime': engines lists tensorrt but no TensorRT"):
        load_profile(str(path))


@pytest.mark.parametrize(
    ("version", "words"),
    [
        ("8.6", "TensorRT 8.6 is not supported; use TensorRT 10.x or 11.x"),
        (10.3, "write it quoted"),
    ],
)
def test_a_tensorrt_version_kdc_cannot_build_is_refused_when_loaded(tmp_path, version, words):
    """A JetPack 5 board's TensorRT 8.6 was refused at the build stage, after distillation,
    naming the config; an unquoted 10.3 said only "Input should be a valid string"."""
    doc = yaml.safe_load((ROOT / "profiles" / "nvidia-t4.yaml").read_text())
    doc["name"], doc["aliases"] = "t4-old", []
    doc["runtime"]["tensorrt"] = version
    path = tmp_path / "t4-old.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match=words) as e:
        load_profile(str(path))
    assert e.value.field == "runtime.tensorrt" and e.value.source == str(path)


@pytest.mark.parametrize("block", ["latency_model", "compute", "memory"])
@pytest.mark.parametrize("value", [None, "  "])
def test_a_profile_without_a_source_is_refused_naming_file_field_and_fix(tmp_path, block, value):
    """PROFILES.md: every figure carries its source. latency_model.source defaulted to
    "defaults", so a custom profile with fitted-looking factors passed as sourced."""
    doc = yaml.safe_load((ROOT / "profiles" / "nvidia-t4.yaml").read_text())
    doc["name"], doc["aliases"] = "my-t4", []
    if value is None:
        del doc[block]["source"]
    else:
        doc[block]["source"] = value
    path = tmp_path / "my-t4.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match="missing or blank") as e:
        load_profile(str(path))
    assert e.value.source == str(path) and e.value.field == f"{block}.source"
    assert e.value.fix.startswith(f"add {block}.source: where these figures come from")
    assert len(str(e.value).splitlines()) == 1


def test_every_shipped_profile_names_its_sources():
    from kdc.profiles import HardwareProfile, profiles_dir

    for path in sorted(profiles_dir().glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        HardwareProfile.model_validate(doc)  # what load_profile checks, sources required
        blocks = ["compute", "memory", "latency_model", *(["dla"] if doc.get("dla") else [])]
        assert all(doc[b]["source"].strip() for b in blocks), path.name


def test_a_source_that_is_not_text_is_not_called_missing(tmp_path):
    """`source: 2023` (a year, read by YAML as a number) was "missing or blank"."""
    doc = yaml.safe_load((ROOT / "profiles" / "nvidia-t4.yaml").read_text())
    doc["name"], doc["aliases"], doc["memory"]["source"] = "my-t4", [], 2023
    path = tmp_path / "my-t4.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match="valid string") as e:
        load_profile(str(path))
    assert "missing" not in e.value.message and e.value.field == "memory.source"
    assert e.value.fix.startswith("add memory.source: where these figures come from")


def test_a_model_config_given_as_a_profile_says_so(tmp_path):
    """`kdc profiles show model.yaml` (or `--target model.yaml`) said only "field
    'constraints': Extra inputs are not permitted"; it now says it is a model config."""
    from typer.testing import CliRunner

    from kdc.cli import app

    cfg = tmp_path / "model.yaml"
    cfg.write_text(
        "name: m\ntask: image-classification\nteacher: {name: resnet18}\n"
        "data: {source: sklearn:digits}\nconstraints: {max_accuracy_drop: 0.02}\n"
    )
    with pytest.raises(UserError, match="is a kdc model config") as e:
        load_profile(str(cfg))
    assert e.value.field == "target" and f"kdc compress {cfg} --target NAME" in e.value.fix
    res = CliRunner().invoke(app, ["profiles", "show", str(cfg)])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "field 'NAME': is a kdc model config (teacher, data), not a hardware" in lines[0]


@pytest.mark.parametrize(
    ("block", "key", "value", "field", "words"),
    [
        ("runtime", "dla_cores", -2, "runtime.dla_cores", "greater than or equal to 0"),
        ("memory", "capacity_gb", 8192, "memory", "write it in GB, not MB (8192 MB = 8 GB)"),
        ("dla", "int8_tops", 26.25e12, "dla.int8_tops", "less than 100000"),
        ("defaults", "batch", 8, "defaults.batch", "set verify.batch in the config"),
    ],
)
def test_a_figure_in_other_units_or_out_of_range_is_refused(
    tmp_path, block, key, value, field, words
):
    """A negative DLA core count loaded (read as none); an accelerator's memory written in MB
    (8192 for 8 GB) passed as 8 TB, against the bounds' comment; a DLA peak in TOPS/1e12 had no
    bound, unlike the GPU's; a batch in `defaults` loaded and was never read (runs took the
    config's verify.batch)."""
    doc = yaml.safe_load((ROOT / "profiles" / "jetson-agx-orin-64gb.yaml").read_text())
    doc["name"], doc["aliases"] = "my-orin", []
    doc[block][key] = value
    path = tmp_path / "my-orin.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match=re.escape(words)) as e:
        load_profile(str(path))
    assert e.value.field == field and e.value.source == str(path)


def test_a_host_may_have_more_memory_than_any_accelerator():
    """The capacity bound that catches an accelerator's memory in MB spares kind cpu."""
    from kdc.profiles import HardwareProfile

    doc = load_profile("host").model_dump(mode="json")
    doc["memory"]["capacity_gb"] = 6144.0
    assert HardwareProfile.model_validate(doc).memory.capacity_gb == 6144.0


def test_a_profile_file_cannot_make_its_target_measured_here(tmp_path):
    """`measurable: true` in a copied profile made verify judge a Jetson's latency budget by
    this machine's ONNX Runtime timings, reported as measured on the target."""
    doc = yaml.safe_load((ROOT / "profiles" / "jetson-orin-nano-8gb.yaml").read_text())
    doc["name"], doc["aliases"], doc["measurable"] = "my-nano", [], True
    path = tmp_path / "my-nano.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match="measurable: true is host's alone") as e:
        load_profile(str(path))
    assert e.value.field == "measurable" and "--target host" in e.value.fix


def test_every_profile_field_is_documented_with_its_unit():
    """PROFILES.md: a profile's fields documented, units stated. No doc listed them all
    (`defaults.channel_divisor`, `runtime.compute_capability` were nowhere for users)."""
    from pydantic import BaseModel

    from kdc.profiles import HardwareProfile

    def fields(model: type[BaseModel], prefix: str = "") -> list[str]:
        out = []
        for name, info in model.model_fields.items():
            nested = [
                a
                for a in (*typing.get_args(info.annotation), info.annotation)
                if isinstance(a, type) and issubclass(a, BaseModel)
            ]
            out += fields(nested[0], f"{prefix}{name}.") if nested else [prefix + name]
        return out

    rows = {
        cells[1].strip("` "): cells[2].strip()
        for line in (ROOT / "docs" / "profiles.md").read_text().splitlines()
        if line.startswith("| `") and len(cells := line.split("|")) > 3
    }
    documented = fields(HardwareProfile)
    assert len(documented) > 30 and set(documented) == set(rows)
    for name in documented:  # a figure states its unit
        if name.endswith(("_tflops", "_tops", "_gbps", "_gb", "_us", "_ms", "_mb")):
            assert rows[name], name
