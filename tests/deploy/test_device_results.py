"""Device results read back as a measured latency object plus parity."""

from __future__ import annotations

import json

import pytest

from kdc.deploy.device_results import read_device_results, trt_version_from_banner
from kdc.deploy.trtexec import parse_export_times
from kdc.errors import UserError

META = {
    "precision": "int8",
    "batch": 1,
    "input_shapes": {"input_ids": [1, 128]},
    "tensorrt_expected": "10.3",
}


@pytest.fixture
def results(tmp_path):
    d = tmp_path / "results"
    d.mkdir()
    rows = [
        {"startComputeMs": i, "computeMs": 0.5 * v, "latencyMs": float(v)}
        for i, v in enumerate(range(1, 101))
    ]
    (d / "times.json").write_text(json.dumps(rows))
    (d / "parity.json").write_text(
        json.dumps({"status": "measured", "runner": "tensorrt", "cosine": 0.9995, "pass": True})
    )
    (d / "device.json").write_text(
        json.dumps(
            {"device": "NVIDIA Jetson Orin Nano Developer Kit", "trtexec": "TensorRT v100300"}
        )
    )
    return d


def test_device_results_are_a_measured_latency_object(results):
    out = read_device_results(results, META)
    lat = out["latency"]
    assert lat["kind"] == "measured" and lat["engine"] == "tensorrt"
    assert lat["device"] == "NVIDIA Jetson Orin Nano Developer Kit"
    assert lat["tensorrt"] == "10.3.0" and lat["precision"] == "int8" and lat["batch"] == 1
    assert lat["iterations"] == 100 and lat["p50_ms"] == pytest.approx(50.5)
    assert lat["mean_ms"] == pytest.approx(50.5) and lat["p99_ms"] == pytest.approx(99.01)
    assert lat["cv"] == pytest.approx(28.866 / 50.5, rel=1e-3)
    assert str(results) in lat["source"] and "--noDataTransfers" in lat["protocol"]
    assert "note" not in lat
    assert out["parity"]["runner"] == "tensorrt" and out["parity"]["pass"]


def test_export_times_compute_metric_and_missing_device_file(results):
    assert parse_export_times(results / "times.json", "computeMs")["p50_ms"] == pytest.approx(25.25)
    (results / "device.json").unlink()
    lat = read_device_results(results, META)["latency"]
    assert lat["kind"] == "measured" and lat["device"].startswith("unknown")


def test_version_mismatch_is_noted(results):
    lat = read_device_results(results, {**META, "tensorrt_expected": "11.0"})["latency"]
    assert "expected TensorRT 11.0" in lat["note"]


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("times.json", None, "times.json: file not found"),
        ("times.json", "{not json", "times.json: not a trtexec"),
        ("times.json", json.dumps([{"count": 3}]), "no per-iteration 'latencyMs'"),
        ("parity.json", None, "parity.json: file not found"),
        ("parity.json", "[1, 2", "parity.json: corrupt JSON"),
        ("device.json", "oops", "device.json: corrupt JSON"),
    ],
)
def test_missing_or_corrupt_files_name_the_file(results, name, content, match):
    path = results / name
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    with pytest.raises(UserError, match=match):
        read_device_results(results, META)


@pytest.mark.parametrize(
    "banner, version",
    [
        ("TensorRT v100300", "10.3.0"),
        ("TensorRT v110102", "11.1.2"),
        ("TensorRT v8601", "8.6.1"),
        ("unknown", None),
    ],
)
def test_trtexec_banner_versions(banner, version):
    assert trt_version_from_banner(banner) == version
