"""The quantization-aware training settings a run does not use: `quantize.method: qat` where it
makes no INT8 graph, QAT's own settings wherever QAT does not run (`preflight.int8_qat`)."""

from __future__ import annotations

from kdc.config import KdcConfig, QuantizeConfig
from kdc.errors import unused_note
from kdc.preflight import builds_int8, int8_qat

# the quantize settings only quantization-aware training reads
QAT_ONLY = ("qat_epochs", "qat_lr")


def unused_qat_settings(cfg: KdcConfig) -> str:
    """One note (`unused_note`) of the QAT settings the config gives that this run does not
    use (`quantize.method: qat`, `QAT_ONLY` fields at other than their defaults); "" where QAT
    runs or none is given."""
    q = cfg.quantize
    default = QuantizeConfig.model_fields
    tuned = [f"quantize.{k}" for k in QAT_ONLY if getattr(q, k) != default[k].default]
    asked = q.method == "qat"
    if int8_qat(cfg) or not (asked or tuned):
        return ""
    if builds_int8(cfg):  # PTQ: tuned only
        why = "this run quantizes after training (quantize.method ptq)"
        need = "quantize.method: qat"
    else:
        why = (
            "quantization-aware training makes an INT8 graph and this run builds "
            f"{q.precision} engines"
        )
        need = "quantize.precision: int8" + ("" if asked else " and quantize.method: qat")
    given = {"quantize.method": "qat"} if asked else {}
    given |= dict.fromkeys(tuned)
    why += ", so distill trains no QAT graph"
    return unused_note(cfg.source_file, given, why, f"set {need} for QAT")
