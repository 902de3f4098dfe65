"""Downstream fine-tuning and evaluation of an exported model (sentence and sentence-pair
classification or regression): `python -m bert_ipu.finetune --model DIR --task TASK`.

Modules: data (CSV/TSV/JSON files or `datasets` -> Task), metrics (accuracy, F1, MCC;
Pearson, Spearman, MSE), trainer (on the `transformers` Trainer), demo (the offline
docstring-topic task and its settings procedure), cli (the command line).
"""
from bert_ipu.finetune.data import Task, TaskError, load_task
from bert_ipu.finetune.trainer import FinetuneSettings, finetune

__all__ = ["Task", "TaskError", "load_task", "FinetuneSettings", "finetune"]
