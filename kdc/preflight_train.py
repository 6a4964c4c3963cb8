"""What a config's training settings cost on the machine that trains: `distill.precision: bf16`
where distillation's device (the first CUDA GPU PyTorch sees, else the CPU) has no native
bfloat16."""

from __future__ import annotations

from kdc.config import KdcConfig

NATIVE_BF16_GPU = (8, 0)  # CUDA compute capability with bfloat16 tensor cores (Ampere)


def _emulated_bf16_gpu() -> str:
    """Why the GPU distillation trains on emulates bfloat16, "" where it runs it natively."""
    import torch

    capability = tuple(torch.cuda.get_device_capability())
    if capability >= NATIVE_BF16_GPU:
        return ""
    have, need = (".".join(map(str, c)) for c in (capability, NATIVE_BF16_GPU))
    return (
        f"this GPU ({torch.cuda.get_device_name()}, compute capability {have}) has no native "
        f"bfloat16 (compute capability {need} or later), so autocast emulates it"
    )


def _emulated_bf16_cpu() -> str:
    """Why this machine's CPU emulates bfloat16 (`cpu_flags.has_native_bf16`), "" where it
    runs it natively."""
    from kdc import cpu_flags, profiles

    model, flags = profiles.cpu_info()
    if cpu_flags.has_native_bf16(flags):
        return ""
    return (
        f"this CPU ({model}) has no native bfloat16 instructions "
        f"({' or '.join(cpu_flags.BF16)}), so autocast emulates them and training runs slower "
        "than in fp32"
    )


def bf16_training_note(cfg: KdcConfig) -> str:
    """A warning where distillation autocasts to bfloat16 on a device without native bfloat16:
    the GPU it trains on, else this machine's CPU (emulated, slower than fp32). "" otherwise."""
    import torch

    if cfg.distill.precision != "bf16":
        return ""
    why = _emulated_bf16_gpu() if torch.cuda.is_available() else _emulated_bf16_cpu()
    if not why:
        return ""
    return f"{cfg.source_file}: distill.precision bf16: {why} (fix: set distill.precision: fp32)"
