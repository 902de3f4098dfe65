"""The project's tools: benchmarks and the FLOPs calculator (thin CLIs) and `benchlib`,
the timing / roofline / training-benchmark helpers they share.

This folder is installed as the package ``dynsp_tools`` (pyproject.toml maps it); each
tool is a console command (``dynsp-bench-ops``, the one name the docs use) and also runs
as a module (``python -m dynsp_tools.bench_ops``).
Benchmark code lives here, never in the product packages ``bert_ipu`` / ``sparse_ops``.
"""
