"""kdc: knowledge distillation → compressed, verified inference engines for a hardware target."""

__version__ = "0.1.0"

from kdc.api import build, compress, distill, export, plan, search, verify  # noqa: E402

__all__ = ["__version__", "build", "compress", "distill", "export", "plan", "search", "verify"]
