"""Sweeps: run every point of a sweep file (spec.py, runner.py), collect the runs into
tables (collect.py, tables.py) and figures (figures.py, curves.py).

    python -m bert_ipu.sweep SWEEP.yaml [--dry-run] [--jobs N] [--emit-commands]
    python -m bert_ipu.sweep collect DIR [--out OUT] [--no-figures]
"""
from bert_ipu.sweep.spec import SweepRun, expand_sweep

__all__ = ["SweepRun", "expand_sweep"]
