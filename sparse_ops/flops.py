"""Training FLOPs per sequence, over layer shapes; model-agnostic (docs/flops.md).

One training step (forward + backward = 3x forward), non-embedding, per sequence of
length S, for L transformer layers of hidden size H:

    FLOPs = 3 * (2 * S * sum_l nnz_weights_l + 4 * S^2 * H * L)

nnz_weights_l counts individual weights (active blocks x B^2); a dense layer counts
O * I. Biases, LayerNorm, softmax, embeddings and heads are left out.

Gradient (RigL) regrowth computes the dense gradient dY^T X of every sparse layer at
every update step, on that step's batch: 2 * N_tokens * O * I per layer, with
N_tokens = batch_size * S. Over a run of T steps with n updates that is
n * batch_size * 2 * S * sum_l O_l I_l in total, i.e. amortised per sequence
n * 2 * S * sum_l O_l I_l / T (independent of the batch size).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

from .dynsp.distribution import layer_block_counts

Shapes = Sequence[tuple[int, int]]


def _positive_int(fn: str, arg: str, value: object, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{fn}: argument '{arg}' must be an int >= {lo}, got {value!r}")
    return value


def nnz_weights(shapes: Shapes, sparsity: float = 0.0, block_size: int = 1,
                distribution: str = "uniform") -> list[int]:
    """Active weights per layer: active blocks x B^2 (sparsity 0: O * I).

    >>> nnz_weights([(768, 768)], 0.9, 16)
    [58880]
    >>> nnz_weights([(4, 8)])
    [32]
    """
    counts = layer_block_counts(shapes, sparsity, distribution, block_size)
    return [c * block_size * block_size for c in counts]


def linear_flops_per_sequence(shapes: Shapes, seq_len: int, sparsity: float = 0.0,
                              block_size: int = 1, distribution: str = "uniform") -> int:
    """3 * 2 * S * sum(nnz_weights): the (sparse) linears of one training step.

    >>> linear_flops_per_sequence([(3, 5)], seq_len=7)  # 3 passes x 2 FLOPs x 7 tokens x 15 weights
    630
    """
    _positive_int("linear_flops_per_sequence", "seq_len", seq_len)
    return 3 * 2 * seq_len * sum(nnz_weights(shapes, sparsity, block_size, distribution))


def attention_flops_per_sequence(seq_len: int, hidden: int, n_layers: int) -> int:
    """3 * 4 * S^2 * H * L: QK^T and attention x V of one training step.

    >>> attention_flops_per_sequence(128, 768, 12)
    1811939328
    """
    fn = "attention_flops_per_sequence"
    _positive_int(fn, "seq_len", seq_len)
    _positive_int(fn, "hidden", hidden)
    _positive_int(fn, "n_layers", n_layers, 0)
    return 3 * 4 * seq_len * seq_len * hidden * n_layers


def rigl_flops_per_update(shapes: Shapes, n_tokens: int) -> int:
    """Extra FLOPs of one gradient-regrowth update: 2 * N_tokens * O * I per layer.

    >>> rigl_flops_per_update([(2, 3), (4, 5)], n_tokens=10)
    520
    """
    _positive_int("rigl_flops_per_update", "n_tokens", n_tokens)
    return sum(2 * n_tokens * o * i for o, i in shapes)


@dataclass(frozen=True)
class FlopsBreakdown:
    """Training FLOPs per sequence, by part (see the module docstring).

    ``rigl_extra_per_update_sequence``: dense-gradient FLOPs per sequence of an update
    step's batch (0 without gradient regrowth). ``rigl_extra_per_sequence``: that cost
    amortised over the run (None when the number of training steps is unknown).
    """

    sparse_linears: int
    attention: int
    rigl_extra_per_update_sequence: int = 0
    rigl_extra_per_sequence: Optional[float] = 0.0

    @property
    def step_per_sequence(self) -> int:
        """FLOPs per sequence of a step without a pattern update (linears + attention)."""
        return self.sparse_linears + self.attention

    @property
    def flops_per_sequence(self) -> float:
        """linears + attention + amortised RigL extra (the Pareto x-axis per sequence)."""
        return self.step_per_sequence + (self.rigl_extra_per_sequence or 0.0)

    def total(self, sequences: int) -> float:
        """FLOPs of a run that sees ``sequences`` sequences (amortised extra included)."""
        return self.flops_per_sequence * sequences

    def as_dict(self) -> dict:
        return {**asdict(self), "flops_per_sequence": self.flops_per_sequence}


def training_flops(active_weights: Sequence[int], shapes: Shapes, *, seq_len: int, hidden: int,
                   n_layers: int, needs_gradient: bool = False, n_updates: int = 0,
                   training_steps: Optional[int] = None) -> FlopsBreakdown:
    """THE FLOPs model: one training step per sequence from the active weights of every
    sparse-able layer (``active_weights[l]`` = active blocks x B^2, or O x I when dense;
    ``shapes[l]`` = its (O, I), for the dense gradient of gradient regrowth).

    Runs count their layers' actual nnz; ``training_flops_per_sequence`` the nominal nnz
    of a sparsity ratio. Both end here, so a run's summary and tools/flops.py agree.

    >>> b = training_flops([8], [(4, 4)], seq_len=2, hidden=4, n_layers=1, needs_gradient=True,
    ...                    n_updates=1, training_steps=4)
    >>> b.sparse_linears, b.attention, b.rigl_extra_per_update_sequence, b.flops_per_sequence
    (96, 192, 64, 304.0)
    """
    fn = "training_flops"
    if len(active_weights) != len(shapes):
        raise ValueError(f"{fn}: arguments 'active_weights' and 'shapes' must have one entry per "
                         f"layer, got {len(active_weights)} and {len(shapes)}")
    _positive_int(fn, "seq_len", seq_len)
    _positive_int(fn, "n_updates", n_updates, 0)
    if training_steps is not None:
        _positive_int(fn, "training_steps", training_steps)
    linears = 3 * 2 * seq_len * sum(int(a) for a in active_weights)
    attention = attention_flops_per_sequence(seq_len, hidden, n_layers)
    if not needs_gradient or n_updates == 0:
        return FlopsBreakdown(linears, attention)
    per_update_seq = rigl_flops_per_update(shapes, seq_len)
    amortised = None if training_steps is None else n_updates * per_update_seq / training_steps
    return FlopsBreakdown(linears, attention, per_update_seq, amortised)


def regrow_needs_gradient(regrow: str) -> bool:
    """Whether the registered regrowth method ``regrow`` reads the dense gradient."""
    from .dynsp.methods import METHODS, regrowth_names

    if regrow not in regrowth_names():
        raise ValueError(f"regrow_needs_gradient: argument 'regrow' must be one of "
                         f"{regrowth_names()}, got {regrow!r}")
    return METHODS[regrow].needs_gradient


def training_flops_per_sequence(shapes: Shapes, *, seq_len: int, hidden: int, n_layers: int,
                                sparsity: float = 0.0, block_size: int = 1,
                                distribution: str = "uniform", n_updates: int = 0,
                                regrow: str = "random",
                                training_steps: Optional[int] = None) -> FlopsBreakdown:
    """``training_flops`` at the nominal nnz of ``sparsity`` (per layer as SparseLinear
    builds it). RigL extra when the regrowth method needs the gradient and
    ``n_updates > 0``; amortised only when ``training_steps`` is given.

    >>> b = training_flops_per_sequence([(4, 4)], seq_len=2, hidden=4, n_layers=1)
    >>> b.sparse_linears, b.attention, b.flops_per_sequence
    (192, 192, 384.0)
    """
    return training_flops(nnz_weights(shapes, sparsity, block_size, distribution), shapes,
                          seq_len=seq_len, hidden=hidden, n_layers=n_layers,
                          needs_gradient=regrow_needs_gradient(regrow), n_updates=n_updates,
                          training_steps=training_steps)


def training_flops_total(shapes: Shapes, *, seq_len: int, hidden: int, n_layers: int,
                         training_steps: int, batch_size: int, **kwargs: object) -> int:
    """Exact FLOPs of a whole run: T steps of ``batch_size`` sequences plus n RigL updates.

    ``kwargs``: sparsity, block_size, distribution, n_updates, regrow (as above).

    >>> training_flops_total([(4, 4)], seq_len=2, hidden=4, n_layers=1, training_steps=10,
    ...                      batch_size=3, n_updates=2, regrow="gradient")
    11904
    """
    fn = "training_flops_total"
    _positive_int(fn, "training_steps", training_steps)
    _positive_int(fn, "batch_size", batch_size)
    b = training_flops_per_sequence(shapes, seq_len=seq_len, hidden=hidden, n_layers=n_layers,
                                    training_steps=training_steps, **kwargs)
    n_updates = int(kwargs.get("n_updates", 0)) if b.rigl_extra_per_update_sequence else 0
    return (b.step_per_sequence * training_steps * batch_size
            + n_updates * b.rigl_extra_per_update_sequence * batch_size)
