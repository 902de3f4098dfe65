"""The BERT model family: the module tree (`bert.py`) and the size presets (`sizes.py`).

    from bert_ipu.model import build_model, MODEL_SIZES
    model = build_model(cfg.model, cfg.sparsity, seed=cfg.training.seed)
"""
from bert_ipu.model.bert import (
    ENCODER_LINEARS, BertForPreTraining, PreTrainingOutput, build_model, encoder_linear_shapes,
    init_weights, linear_densities, mlm_loss_and_counts,
    sparse_modules,
)
from bert_ipu.model.sizes import MODEL_SIZES, ModelSize

__all__ = ["ENCODER_LINEARS", "BertForPreTraining", "PreTrainingOutput", "build_model",
           "encoder_linear_shapes", "init_weights", "linear_densities",
           "mlm_loss_and_counts", "sparse_modules", "MODEL_SIZES", "ModelSize"]
