"""What a config's training settings cost on the machine that trains: `distill.precision: bf16`
on a CPU without native bfloat16 instructions."""

from __future__ import annotations

from kdc.config import KdcConfig


def bf16_training_note(cfg: KdcConfig) -> str:
    """A warning where distillation autocasts to bfloat16 on this machine's CPU (no CUDA device)
    and the CPU has no native bfloat16 (`cpu_flags.has_native_bf16`): emulated, slower than
    fp32. "" otherwise."""
    import torch

    from kdc import cpu_flags, profiles

    if cfg.distill.precision != "bf16" or torch.cuda.is_available():
        return ""
    model, flags = profiles.cpu_info()
    if cpu_flags.has_native_bf16(flags):
        return ""
    return (
        f"{cfg.source_file}: distill.precision bf16: this CPU ({model}) has no native bfloat16 "
        f"instructions ({' or '.join(cpu_flags.BF16)}), so autocast emulates them and training "
        "runs slower than in fp32 (fix: set distill.precision: fp32)"
    )
