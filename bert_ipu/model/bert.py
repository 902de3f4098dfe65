"""BERT for pre-training (MLM + NSP) on the Hugging Face `BertForPreTraining` module tree.

A dense model's state dict has exactly the keys and shapes of
`transformers.BertForPreTraining`, so checkpoints map 1:1. The six fully connected
weights of every encoder layer (query, key, value, attention output, FFN up, FFN down)
are `nn.Linear` (dense), or, for static / dynamic sparsity, turned into compressed
`sparse_ops.linear.SparseLinear` by `sparse_ops.sparsify` (`build_model`), the same public
call a user makes on their own model; everything else is dense.

Shapes: B batch, S sequence, H hidden, P masked positions per sequence, V vocabulary,
nh heads, hd = H / nh. The MLM head runs only on the P gathered masked positions: the
vocabulary projection [.., H] -> [.., V] never sees all S tokens.
"""
from __future__ import annotations

import zlib
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bert_ipu.model.dropout import Dropout, attention

if TYPE_CHECKING:  # the config is only read here; importing it would tie model <-> config
    from bert_ipu.config import ModelConfig, SparsityConfig

LinearFactory = Callable[[int, int, str], nn.Module]  # (in_features, out_features, name)

# The sparse-able linears of encoder layer i, relative to `bert.encoder.layer.{i}`.
ENCODER_LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value",
                   "attention.output.dense", "intermediate.dense", "output.dense")


def encoder_linear_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """Full module name -> (out_features, in_features) of every sparse-able linear."""
    H, I = cfg.hidden_size, cfg.intermediate_size
    shape = {"intermediate.dense": (I, H), "output.dense": (H, I)}
    return {f"bert.encoder.layer.{i}.{name}": shape.get(name, (H, H))
            for i in range(cfg.num_hidden_layers) for name in ENCODER_LINEARS}


def linear_densities(cfg: ModelConfig, sparsity: SparsityConfig) -> dict[str, float]:
    """Full module name -> density of every encoder linear (1.0 for method dense);
    uniform or Erdos-Renyi (`sparse_ops.dynsp.distribution.layer_densities`)."""
    shapes = encoder_linear_shapes(cfg)
    if sparsity.method == "dense":
        return dict.fromkeys(shapes, 1.0)
    from sparse_ops.dynsp.distribution import layer_densities

    values = layer_densities(list(shapes.values()), sparsity.sparsity, sparsity.distribution,
                             sparsity.block_size)
    return dict(zip(shapes, values))


def _name_seed(seed: int, name: str) -> int:
    """A per-layer seed that depends on the module name, not on construction order."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


def _dense_factory(in_f: int, out_f: int, name: str) -> nn.Module:
    return nn.Linear(in_f, out_f)


# ---------------------------------------------------------------- modules (HF names)
class BertEmbeddings(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        H = cfg.hidden_size
        self.word_embeddings = nn.Embedding(cfg.vocab_size, H, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, H)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, H)
        self.LayerNorm = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        S = input_ids.shape[1]
        positions = torch.arange(S, device=input_ids.device)                    # (S,)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(positions)                              # (B, S, H)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, prefix: str, linear: LinearFactory) -> None:
        super().__init__()
        H = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.query = linear(H, H, f"{prefix}.query")
        self.key = linear(H, H, f"{prefix}.key")
        self.value = linear(H, H, f"{prefix}.value")
        self.dropout_p = cfg.attention_probs_dropout_prob

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        B, S, H = x.shape
        nh = self.num_heads

        def heads(t: Tensor) -> Tensor:
            return t.view(B, S, nh, H // nh).transpose(1, 2)                    # (B, nh, S, hd)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        p = self.dropout_p if self.training else 0.0
        y = attention(q, k, v, mask, p)
        return y.transpose(1, 2).reshape(B, S, H)                                # (B, S, H)


class BertSelfOutput(nn.Module):
    def __init__(self, cfg: ModelConfig, prefix: str, linear: LinearFactory) -> None:
        super().__init__()
        self.dense = linear(cfg.hidden_size, cfg.hidden_size, f"{prefix}.dense")
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, prefix: str, linear: LinearFactory) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg, f"{prefix}.self", linear)
        self.output = BertSelfOutput(cfg, f"{prefix}.output", linear)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: ModelConfig, prefix: str, linear: LinearFactory) -> None:
        super().__init__()
        self.dense = linear(cfg.hidden_size, cfg.intermediate_size, f"{prefix}.dense")

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))                                             # (B, S, 4H)


class BertOutput(BertSelfOutput):
    def __init__(self, cfg: ModelConfig, prefix: str, linear: LinearFactory) -> None:
        nn.Module.__init__(self)
        self.dense = linear(cfg.intermediate_size, cfg.hidden_size, f"{prefix}.dense")
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.hidden_dropout_prob)


class BertLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, prefix: str, linear: LinearFactory) -> None:
        super().__init__()
        self.attention = BertAttention(cfg, f"{prefix}.attention", linear)
        self.intermediate = BertIntermediate(cfg, f"{prefix}.intermediate", linear)
        self.output = BertOutput(cfg, f"{prefix}.output", linear)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig, prefix: str, linear: LinearFactory) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg, f"{prefix}.layer.{i}", linear)
                                   for i in range(cfg.num_hidden_layers))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertPooler(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.dense(x[:, 0]))                                   # (B, H)


class BertModel(nn.Module):
    def __init__(self, cfg: ModelConfig, linear: LinearFactory) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg, "bert.encoder", linear)
        self.pooler = BertPooler(cfg)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor,
                attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        # Boolean SDPA mask, True = attend: padded keys are ignored.     (B, 1, 1, S)
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        x = self.encoder(self.embeddings(input_ids, token_type_ids), mask)     # (B, S, H)
        return x, self.pooler(x)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    """Transform + decoder; the decoder weight IS the word-embedding matrix and its
    bias IS `self.bias` (both keys appear in the state dict, as in HF)."""

    def __init__(self, cfg: ModelConfig, word_embeddings: nn.Parameter) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(cfg)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, device="meta")
        self.decoder.weight = word_embeddings                                    # (V, H)
        self.decoder.bias = self.bias                                            # (V,)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.transform(x))                                   # (.., V)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, cfg: ModelConfig, word_embeddings: nn.Parameter) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(cfg, word_embeddings)
        self.seq_relationship = nn.Linear(cfg.hidden_size, 2)

    def forward(self, sequence_output: Tensor, pooled_output: Tensor,
                masked_lm_positions: Tensor) -> tuple[Tensor, Tensor]:
        H = sequence_output.shape[-1]
        index = masked_lm_positions.long().unsqueeze(-1).expand(-1, -1, H)      # (B, P, H)
        gathered = torch.gather(sequence_output, 1, index)                       # (B, P, H)
        return self.predictions(gathered), self.seq_relationship(pooled_output)


@dataclass
class PreTrainingOutput:
    """Logits, losses (when labels are given) and accuracy counts (detached)."""

    mlm_logits: Tensor                # (B, P, V) at the masked positions only
    nsp_logits: Tensor                # (B, 2); label 0 = IsNext, 1 = random
    loss: Tensor | None = None        # mlm_loss + nsp_loss (those that were computed)
    mlm_loss: Tensor | None = None    # weighted mean cross-entropy over real predictions
    nsp_loss: Tensor | None = None    # mean cross-entropy over the batch
    mlm_correct: Tensor | None = None  # () weighted count of correct predictions
    mlm_count: Tensor | None = None   # () sum of masked_lm_weights
    nsp_correct: Tensor | None = None  # () correct NSP predictions
    nsp_count: Tensor | None = None   # () sequences


def mlm_loss_and_counts(mlm_logits: Tensor, masked_lm_ids: Tensor,
                        masked_lm_weights: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, correct, count): sum_i w_i CE_i / sum_i w_i over the B*P predictions.

    Weights default to 1 where the id is not -100; ids of -100 never contribute."""
    logits = mlm_logits.float().flatten(0, 1)                                   # (B*P, V)
    ids = masked_lm_ids.long().flatten()                                         # (B*P,)
    real = ids != -100
    w = real.float() if masked_lm_weights is None else masked_lm_weights.float().flatten() * real
    ce = F.cross_entropy(logits, ids, reduction="none", ignore_index=-100)       # (B*P,)
    count = w.sum()
    loss = (ce * w).sum() / count.clamp_min(1e-5)
    correct = ((logits.detach().argmax(-1) == ids).float() * w).sum()
    return loss, correct, count.detach()


class BertForPreTraining(nn.Module):
    """`bert` (embeddings, encoder, pooler) + `cls` (MLM and NSP heads), HF names."""

    def __init__(self, cfg: ModelConfig, linear: LinearFactory = _dense_factory) -> None:
        super().__init__()
        self.config = cfg
        self.bert = BertModel(cfg, linear)
        self.cls = BertPreTrainingHeads(cfg, self.bert.embeddings.word_embeddings.weight)

    def forward(self, input_ids: Tensor, masked_lm_positions: Tensor,
                token_type_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                masked_lm_ids: Tensor | None = None, masked_lm_weights: Tensor | None = None,
                next_sentence_label: Tensor | None = None) -> PreTrainingOutput:
        """input_ids, token_type_ids, attention_mask (1 = real token): (B, S);
        masked_lm_positions, masked_lm_ids, masked_lm_weights: (B, P);
        next_sentence_label: (B,). Losses are computed for the labels given."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        seq, pooled = self.bert(input_ids, token_type_ids, attention_mask)      # (B,S,H) (B,H)
        mlm_logits, nsp_logits = self.cls(seq, pooled, masked_lm_positions)     # (B,P,V) (B,2)
        return pretraining_output(mlm_logits, nsp_logits, masked_lm_ids, masked_lm_weights,
                                  next_sentence_label)


def pretraining_output(mlm_logits: Tensor, nsp_logits: Tensor, masked_lm_ids: Tensor | None,
                       masked_lm_weights: Tensor | None, next_sentence_label: Tensor | None
                       ) -> PreTrainingOutput:
    """The heads' logits (B,P,V) (B,2) with the losses of the labels given (the model's
    forward and the last pipeline stage's loss share this arithmetic)."""
    out = PreTrainingOutput(mlm_logits=mlm_logits, nsp_logits=nsp_logits)
    losses = []
    if masked_lm_ids is not None:
        out.mlm_loss, out.mlm_correct, out.mlm_count = mlm_loss_and_counts(
            mlm_logits, masked_lm_ids, masked_lm_weights)
        losses.append(out.mlm_loss)
    if next_sentence_label is not None:
        labels = next_sentence_label.long().flatten()                           # (B,)
        out.nsp_loss = F.cross_entropy(nsp_logits.float(), labels)
        out.nsp_correct = (nsp_logits.detach().argmax(-1) == labels).sum()
        out.nsp_count = torch.tensor(labels.numel(), device=labels.device)
        losses.append(out.nsp_loss)
    if losses:
        out.loss = sum(losses[1:], losses[0])
    return out


# ---------------------------------------------------------------- building and helpers
@torch.no_grad()
def init_weights(model: nn.Module, std: float, generator: torch.Generator) -> None:
    """HF `_init_weights` semantics with truncation at 2 std: weights and embeddings
    ~ truncated normal(0, std), biases 0, LayerNorm weight 1, the [PAD] embedding row
    0, SparseLinear values ~ truncated normal. Tied parameters are initialised once, in
    module order, so the result depends only on the generator. A parameter on the meta
    device (another pipeline stage's) still takes its draws from the generator, which
    are discarded: the others get the values of the whole model's build."""
    seen: set[int] = set()
    for module in model.modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            random = not (isinstance(module, nn.LayerNorm) or pname == "bias" or param.ndim == 1)
            if random:
                fresh = torch.empty(param.shape, dtype=torch.float32)
                nn.init.trunc_normal_(fresh, 0.0, std, -2 * std, 2 * std, generator=generator)
            if param.is_meta:
                continue
            if random:
                param.copy_(fresh)
            else:
                param.fill_(1.0 if isinstance(module, nn.LayerNorm) and pname == "weight" else 0.0)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None \
                and not module.weight.is_meta:
            module.weight[module.padding_idx].zero_()


def materialize(model: nn.Module, keep: Callable[[str], bool]) -> None:
    """Parameters and buffers of `model` on the meta device whose full name `keep`
    accepts become (uninitialised) CPU tensors, in place; a tied parameter is
    materialised once, when `keep` accepts any of its names, and stays tied."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    made: dict[int, nn.Parameter] = {}
    for mname, module in model.named_modules():
        for pname, p in list(module._parameters.items()):
            if p is None or not p.is_meta:
                continue
            if id(p) not in made:
                if not any(keep(n) for n in names[id(p)]):
                    continue
                made[id(p)] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype), p.requires_grad)
            module._parameters[pname] = made[id(p)]
        for bname, b in list(module._buffers.items()):
            if b is not None and b.is_meta and keep(f"{mname}.{bname}" if mname else bname):
                module._buffers[bname] = torch.empty(b.shape, dtype=b.dtype)


def build_model(model_cfg: ModelConfig, sparsity_cfg: SparsityConfig, seed: int,
                keep: Callable[[str], bool] | None = None) -> BertForPreTraining:
    """The configured model on CPU, initialised from `seed` (the global RNG is left as
    it was); sparse patterns come from (sparsity.seed, module name).

    `keep` (full state-dict name -> bool; a pipeline stage's) builds only the accepted
    parameters and buffers on the CPU, with the values the whole model would have; the
    rest stays on the meta device (its shapes, no memory), so a process never holds
    the weights, patterns or gradients of another stage."""
    if model_cfg.vocab_size is None:  # resolved by Config from data.vocab_size
        raise ValueError("build_model: argument 'model_cfg' must have vocab_size set (build "
                         "it through bert_ipu.config.Config, or pass vocab_size), got None")
    sparse = sparsity_cfg.method != "dense"
    names: list[str] = []

    def linear(in_f: int, out_f: int, name: str) -> nn.Module:
        names.append(name)   # a sparse model's are placeholders (meta) until sparsify
        return nn.Linear(in_f, out_f, device="meta" if sparse else None)

    with torch.random.fork_rng(devices=[]), torch.device("meta") if keep else nullcontext():
        model = BertForPreTraining(model_cfg, linear)
    if sparse:
        densities = linear_densities(model_cfg, sparsity_cfg)
        mine = [n for n in names if keep is None or keep(f"{n}.values")]
        others = [n for n in names if n not in mine]
        for group, device in ((mine, None), (others, "meta")):
            if group:
                sparsify_encoder(model, group, sparsity_cfg, densities, device=device)
    if keep is not None:
        materialize(model, keep)
    init_weights(model, model_cfg.initializer_range, torch.Generator().manual_seed(seed))
    return model


def sparsify_encoder(model: nn.Module, names: list[str], sparsity_cfg: SparsityConfig,
                     densities: dict[str, float], device: str | None = None) -> None:
    """The encoder linears `names` become compressed SparseLinear through the public API
    (`sparse_ops.sparsify`, the same call a user makes on their own model): a random
    pattern per layer with its density, seeded from (sparsity.seed, name), the
    configured block size, backend and inactive mode."""
    from sparse_ops.convert import sparsify

    base = sparsity_cfg.seed or 0
    sparsify(model, block_size=sparsity_cfg.block_size, patterns=names, init="random",
             backend=sparsity_cfg.backend, density=densities,
             layer_seed=lambda name: _name_seed(base, name), inactive=sparsity_cfg.inactive,
             device=device)


def sparse_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Full name -> SparseLinear of every sparse linear in `model` (empty when dense)."""
    try:
        from sparse_ops.linear import SparseLinear
    except ImportError:
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, SparseLinear)}
