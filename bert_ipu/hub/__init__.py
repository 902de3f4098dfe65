"""A pre-trained model leaving (and re-entering) the project.

    src = load_pretrained("runs/demo")            # a run folder, checkpoint or exported folder
    sizes = export_folder(src, "exported/demo", sparse=True)   # Hugging Face folder

Modules: source (read a checkpoint / run / exported folder: config, model, vocabulary),
sparse (the compressed block-sparse safetensors form and its loader), export (the
Hugging Face folder: config.json, model.safetensors, tokenizer, model card), card (the
model card), init (start a run from pre-trained weights).
"""
from bert_ipu.hub.source import HubError, Pretrained, load_pretrained

__all__ = ["HubError", "Pretrained", "load_pretrained"]
