"""The project's tools: benchmarks and the FLOPs calculator (thin CLIs) and `benchlib`,
the timing / roofline / training-benchmark helpers they share.

This folder is installed as the package ``dynsp_tools`` (pyproject.toml maps it), so
the tools run as scripts (``python tools/bench_ops.py``), as modules
(``python -m dynsp_tools.bench_ops``) or as console commands (``dynsp-bench-ops``).
Benchmark code lives here, never in the product packages ``bert_ipu`` / ``sparse_ops``.
"""
