"""Which ONNX Runtime package is installed: exactly one of them must be (they share the
`onnxruntime` package directory, so a second one silently replaces the first one's providers)."""

from __future__ import annotations

from importlib import metadata, util

from kdc.errors import UserError

# the PyPI distributions that install the `onnxruntime` Python package
PACKAGES = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-openvino",
    "onnxruntime-directml",
    "onnxruntime-qnn",
)
INSTALL = "pip install 'kdc[cpu]' (or 'kdc[gpu]' on a CUDA machine; one of the two)"


def installed() -> list[str]:
    """The ONNX Runtime distributions pip has installed here."""
    found = []
    for name in PACKAGES:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def missing_error() -> UserError:
    """The error for a command that needs ONNX Runtime where none is installed."""
    return UserError("ONNX Runtime is not installed", fix=INSTALL)


def require() -> None:
    """Before a run (every run builds or verifies an ONNX Runtime engine): `missing_error`
    unless the `onnxruntime` module can be imported."""
    if util.find_spec("onnxruntime") is None:
        raise missing_error()


def conflict_warning(found: list[str] | None = None) -> str | None:
    """A warning when more than one ONNX Runtime distribution is installed, else None."""
    found = installed() if found is None else found
    if len(found) < 2:
        return None
    keep = next((f for f in found if f != "onnxruntime"), found[0])
    return (
        f"{' and '.join(found)} are {'both' if len(found) == 2 else 'all'} installed: they "
        "share one package directory, so the "
        "execution providers ONNX Runtime offers depend on which was installed last; run "
        f"pip uninstall -y {' '.join(found)} && pip install {keep}"
    )
