"""What /proc/cpuinfo says of a CPU: its model name and the instruction-set flags that matter
for int8 inference and bfloat16 training (`kdc.profiles.cpu_info` reads this machine's)."""

from __future__ import annotations

import platform


def parse_cpuinfo(cpuinfo: str, board: str = "") -> tuple[str, set[str]]:
    """The model name and flags of /proc/cpuinfo. ARM boards list no model name there: the
    board's device-tree model (a Jetson's name) and the architecture instead."""
    model, flags = "", set()
    for line in cpuinfo.splitlines():
        if line.startswith("model name") and ":" in line:
            model = line.split(":", 1)[1].strip()
        elif line.startswith(("flags", "Features")) and ":" in line:
            flags = set(line.split(":", 1)[1].split())
    if not model:
        arch, board = platform.processor() or platform.machine(), board.strip("\0 \n")
        model = f"{board} ({arch})" if board else arch
    return model, flags


def host_isa(flags: set[str]) -> list[str]:
    """The ISA extensions that matter for inference, in a stable order."""
    wanted = [
        "avx2",
        "fma",
        "avx512f",
        "avx512_vnni",
        "avx_vnni",
        "avx512_bf16",
        "amx_int8",
        "asimd",
        "asimddp",
        "sve",
    ]
    return [f for f in wanted if f in flags]


INT8_DOT = {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"}  # int8 dot-product instructions


def has_int8_dot(flags: set[str]) -> bool:
    """Whether a CPU with these /proc/cpuinfo flags has int8 dot-product instructions (VNNI, AMX,
    Arm dotprod), which make int8 matrix kernels several times faster than without."""
    return bool(INT8_DOT & flags)


def int8_saturates(flags: set[str]) -> bool:
    """Whether ONNX Runtime's x86 int8 kernels on a CPU with these flags multiply through 16-bit
    pair sums (pmaddubsw: SSE4.1/AVX2/AVX-512 without VNNI), which saturate with 8-bit weights;
    its quantizer's `reduce_range` (7-bit weights) is the fix it documents."""
    return bool({"sse4_1", "avx2", "avx512bw"} & flags) and not has_int8_dot(flags)


BF16 = ("avx512_bf16", "amx_bf16")  # native bfloat16 dot-product instructions (x86)


def has_native_bf16(flags: set[str]) -> bool:
    """Whether a CPU with these /proc/cpuinfo flags runs bfloat16 matrix kernels natively; on
    others PyTorch's bfloat16 autocast converts to and from fp32 and runs slower than fp32."""
    return bool(set(BF16) & flags)
