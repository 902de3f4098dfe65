"""`python -m bert_ipu.finetune`: see bert_ipu/finetune/cli.py."""
import sys

from bert_ipu.finetune.cli import main

sys.exit(main())
