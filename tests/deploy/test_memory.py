"""The peak-memory probe feeds the engine as a session would: each input cast to its dtype."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kdc.deploy.memory import engine_peak_rss_mb
from kdc.errors import UserError


@pytest.fixture(scope="module")
def int32_tokens(tmp_path_factory) -> Path:
    """A two-input text graph whose token inputs are declared int32."""
    dims = ["batch", "sequence"]
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT32, dims)
        for n in ("input_ids", "attention_mask")
    ]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])
    nodes = [
        helper.make_node("Mul", ["input_ids", "attention_mask"], ["kept"]),
        helper.make_node("Cast", ["kept"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["f", "axes"], ["logits"], keepdims=1),
    ]
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    graph = helper.make_graph(nodes, "g", inputs, [out], [axes])
    path = tmp_path_factory.mktemp("memory") / "int32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_int64_token_inputs_are_cast_to_the_models_int32(int32_tokens: Path) -> None:
    """Encoders give int64 token ids; the probe casts them to the declared int32, as
    `feed_for` does for the timed session, instead of dying in its subprocess."""
    x = {k: np.ones((3, 8), np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    mem = engine_peak_rss_mb(int32_tokens, x)
    assert mem["kind"] == "measured" and mem["peak_rss_mb"] > 0 and mem["batch"] == 3


def test_a_missing_model_input_is_a_user_error(int32_tokens: Path) -> None:
    with pytest.raises(UserError, match="attention_mask"):
        engine_peak_rss_mb(int32_tokens, {"input_ids": np.ones((1, 8), np.int64)})
