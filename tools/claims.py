"""The claim table of the CPU suite (docs/results/README.md), generated from the runs.

    python -m dynsp_tools.claims [--runs runs/repro/cpu] [--out docs/results/cpu]

Reads the collected runs of the suite's sweeps (`dose`, `prose_gate`, `prose`; any
that are missing are left out) and writes `claims.md` (the table and the curve
separation), `claims.csv` (every number of the table) and `differences.png`
(each comparison with its 95 % interval). Nothing in them is typed by hand: every
number comes from the runs' `summary.json` / `metrics.jsonl`.

Statistics: a difference of means between two arms with Welch's 95 % interval (unequal
variances, Welch-Satterthwaite degrees of freedom; Student-t quantile computed here);
verdict "supported" when the interval lies on the side the paper's mechanism predicts,
"contradicted" when it lies on the other side, "not resolved" when it contains 0. With 3
seeds an interval rests on ~2-4 degrees of freedom, so a true difference has to be about
3 standard errors large to be resolved.

The real-prose gate (`prose_gate`): the 3-seed `prose` comparison is run only if dense
BERT-Tiny beats static s = 0.9 by at least GATE_MARGIN nat at the end and the gap is still
growing (larger at the end than at 3/4 of training); `tools/reproduce.py` asks `gate`.
"""
from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from bert_ipu.schema import parse_yaml_value
from bert_ipu.sweep.collect import collect_runs, read_metrics
from dynsp_tools.pages import replace_block

GATE_MARGIN = 0.1    # nat: dense must beat static s = 0.9 by this much for the prose comparison
GATE_GROWTH_AT = 0.75  # ... and the gap must be larger at the end than at this fraction of training
LEVEL = 0.95


# ---- statistics ----------------------------------------------------------------------

def t_cdf(x: float, df: float) -> float:
    """Student-t CDF (regularised incomplete beta by its continued fraction)."""
    if x == 0:
        return 0.5
    z = df / (df + x * x)
    tail = 0.5 * _betainc(df / 2, 0.5, z)
    return 1 - tail if x > 0 else tail


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
                     + b * math.log(1 - x))
    if x > (a + 1) / (a + b + 2):
        return 1 - _betainc(b, a, 1 - x)
    # Lentz's continued fraction
    tiny, f, c, d = 1e-300, 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -((a + m) * (a + b + m) * x) / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1 + num * d
        d = tiny if abs(d) < tiny else d
        d = 1 / d
        c = 1 + num / c
        c = tiny if abs(c) < tiny else c
        f *= c * d
        if abs(1 - c * d) < 1e-12:
            break
    return front * (f - 1) / a


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with df degrees of freedom (bisection on t_cdf)."""
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass
class Contrast:
    """sum_i c_i mean(x_i) with Welch's interval (Welch-Satterthwaite degrees of freedom);
    two terms (1, a), (-1, b) are the plain difference of means."""

    terms: list[tuple[float, list[float]]]

    @property
    def value(self) -> float:
        return sum(c * statistics.fmean(xs) for c, xs in self.terms)

    def interval(self, level: float = LEVEL) -> tuple[Optional[float], Optional[float], Optional[float]]:
        """(low, high, df); None where a group has fewer than 2 runs."""
        if any(len(xs) < 2 for _, xs in self.terms):
            return None, None, None
        parts = [(c * c * statistics.variance(xs) / len(xs), len(xs) - 1) for c, xs in self.terms]
        var = sum(v for v, _ in parts)
        if var == 0:
            return self.value, self.value, math.inf
        df = var ** 2 / sum(v * v / d for v, d in parts if v > 0)
        half = t_quantile(0.5 + level / 2, df) * math.sqrt(var)
        return self.value - half, self.value + half, df


def Diff(a: list[float], b: list[float]) -> Contrast:  # noqa: N802 (reads as the formula)
    """mean(a) - mean(b) with Welch's interval."""
    return Contrast([(1.0, a), (-1.0, b)])


def verdict(low: Optional[float], high: Optional[float], predicted_sign: int) -> str:
    """supported / contradicted / not resolved, for a predicted sign of the difference;
    predicted sign 0 ("no difference", the paper's on-the-line condition): holds while the
    interval contains 0."""
    if low is None or high is None:
        return "not resolved (one seed)"
    if predicted_sign == 0:
        if low <= 0 <= high:
            return "condition holds (interval contains 0)"
        return "condition fails: " + ("below" if high < 0 else "above") + " the dense line"
    if low <= 0 <= high:
        return "not resolved (interval contains 0)"
    side = 1 if low > 0 else -1
    return "supported" if side == predicted_sign else "contradicted"


# ---- runs ----------------------------------------------------------------------------

def _finished(root: Path) -> list[dict[str, Any]]:
    if not root.is_dir():
        return []
    rows, _ = collect_runs(root)
    return [r for r in rows if r["status"] == "finished" and r.get("mlm_loss") is not None]


def _arm(rows: list[dict[str, Any]], method: str, sparsity: float = 0.0,
         hidden: Optional[int] = None) -> list[dict[str, Any]]:
    def hid(r: dict[str, Any]) -> Optional[int]:
        return r.get("hidden_size")
    return [r for r in rows if r.get("method") == method
            and abs(float(r.get("sparsity") or 0.0) - sparsity) < 1e-9
            and (hidden is None or hid(r) in (hidden, None))]


def _losses(rows: list[dict[str, Any]]) -> list[float]:
    return [float(r["mlm_loss"]) for r in rows]


def _eval_curve(run: str) -> dict[int, float]:
    return {int(r["step"]): float(r["eval_mlm_loss"]) for r in read_metrics(Path(run))
            if r.get("eval_mlm_loss") is not None and r.get("step")}


def separation_step(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> Optional[int]:
    """The first evaluation step from which on mean(a) - mean(b) stays outside its 95 %
    interval (same side) until the end; None if it never separates."""
    curves_a = [_eval_curve(r["run"]) for r in a]
    curves_b = [_eval_curve(r["run"]) for r in b]
    steps = sorted(set.intersection(*(set(c) for c in curves_a + curves_b))) if curves_a and curves_b else []
    first = None
    side = 0
    for s in steps:
        low, high, _ = Diff([c[s] for c in curves_a], [c[s] for c in curves_b]).interval()
        now = 0 if low is None or low <= 0 <= high else (1 if low > 0 else -1)
        if now != 0 and now == side:
            continue
        side, first = now, (s if now != 0 else None)
    return first


# ---- the gate ------------------------------------------------------------------------

def gate(root: Path) -> tuple[bool, str]:
    """Whether the prose comparison should run, and why (one sentence with the numbers)."""
    rows = _finished(root)
    dense, static = _arm(rows, "dense"), _arm(rows, "static", 0.9)
    if not dense or not static:
        return False, f"{root}: the gate needs a finished dense and static s = 0.9 run"
    cd, cs = _eval_curve(dense[0]["run"]), _eval_curve(static[0]["run"])
    steps = sorted(set(cd) & set(cs))
    last = steps[-1]
    mid = min(steps, key=lambda s: abs(s - GATE_GROWTH_AT * last))
    gap_end, gap_mid = cs[last] - cd[last], cs[mid] - cd[mid]
    ok = gap_end >= GATE_MARGIN and gap_end > gap_mid
    text = (f"static s = 0.9 minus dense held-out MLM loss: {gap_end:+.3f} nat at step {last}, "
            f"{gap_mid:+.3f} at step {mid} (go needs >= {GATE_MARGIN} at the end and growing)")
    return ok, ("go: " if ok else "no-go: ") + text


# ---- the table -----------------------------------------------------------------------

@dataclass
class Claim:
    claim: str
    prediction: str
    sign: int                                        # predicted sign of the contrast
    terms: list[tuple[float, list[dict[str, Any]], str]]  # (coefficient, runs, name)

    @property
    def pair(self) -> Optional[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
        """(a, b) when the claim is the plain difference a - b."""
        if len(self.terms) == 2 and self.terms[0][0] == 1.0 and self.terms[1][0] == -1.0:
            return self.terms[0][1], self.terms[1][1]
        return None


def _pair(claim: str, prediction: str, sign: int, a: list[dict[str, Any]], b: list[dict[str, Any]],
          a_name: str, b_name: str) -> Claim:
    return Claim(claim, prediction, sign, [(1.0, a, a_name), (-1.0, b, b_name)])


def dense_line(dense: list[dict[str, Any]], flops: float) -> Optional[list[tuple[float, list[dict[str, Any]], str]]]:
    """The dense line at `flops` as a contrast: linear in log FLOPs between the two dense
    widths that bracket it, [(weight, runs, name), ...]; None outside the line."""
    by_h: dict[Any, list[dict[str, Any]]] = {}
    for r in dense:
        by_h.setdefault(r.get("hidden_size"), []).append(r)
    pts = sorted((statistics.fmean(float(r["total_flops"]) for r in rs), h, rs) for h, rs in by_h.items()
                 if all(r.get("total_flops") for r in rs))
    for (f0, h0, r0), (f1, h1, r1) in zip(pts, pts[1:]):
        if f0 <= flops <= f1:
            w = (math.log(flops) - math.log(f0)) / (math.log(f1) - math.log(f0))
            return [(-(1 - w), r0, f"dense H={h0}"), (-w, r1, f"dense H={h1}")]
    return None


def _stat(rows: list[dict[str, Any]]) -> str:
    xs = _losses(rows)
    if not xs:
        return "-"
    sd = f" ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else ""
    return f"{statistics.fmean(xs):.3f}{sd} (n = {len(xs)})"


def claims(runs: Path) -> list[Claim]:
    """The comparisons of the suite that have runs."""
    dose = _finished(runs / "dose") + _finished(runs / "dose_extra")
    prose = _finished(runs / "prose")
    out: list[Claim] = []
    for s in (0.9, 0.97, 0.99):
        dyn, sta = _arm(dose, "dynamic", s), _arm(dose, "static", s)
        if dyn and sta:
            out.append(_pair(f"DynSp beats static at s = {s} (built-in corpus, B = 1, n = 160)",
                             "lower loss: exploring the pattern recovers capacity that a fixed "
                             "random pattern lacks", -1, dyn, sta, f"DynSp s={s}", f"static s={s}"))
    ends = [(_arm(dose, "dynamic", s), _arm(dose, "static", s), s) for s in (0.99, 0.9)]
    if all(d and t for d, t, _ in ends):
        (d99, s99, _), (d90, s90, _) = ends
        out.append(Claim("DynSp's gain over static grows with sparsity (s = 0.99 against 0.9)",
                         "a larger gain where the pattern is the tighter bottleneck", -1,
                         [(1.0, d99, "DynSp s=0.99"), (-1.0, s99, "static s=0.99"),
                          (-1.0, d90, "DynSp s=0.9"), (1.0, s90, "static s=0.9")]))
    dense = _arm(dose, "dense", hidden=128)
    for s in (0.9, 0.99):
        sta = _arm(dose, "static", s)
        if dense and sta:
            out.append(_pair(f"static s = {s} is capacity-limited (loses to dense BERT-Tiny)",
                             "higher loss than the dense model of the same width (the paper's "
                             "regime: the encoder's pattern is the bottleneck)", +1, sta, dense,
                             f"static s={s}", "dense Tiny"))
    all_dense = _arm(dose, "dense")
    for s in (0.9, 0.97, 0.99):
        sta = _arm(dose, "static", s)
        flops = [float(r["total_flops"]) for r in sta if r.get("total_flops")]
        line = dense_line(all_dense, statistics.fmean(flops)) if flops else None
        if sta and line:
            out.append(Claim(f"static s = {s} lies on the dense line at its FLOPs (the paper's condition "
                             "for reading a sparse point below the line as a sparse-training effect)",
                             "no difference from the dense line (interpolated in log FLOPs)", 0,
                             [(1.0, sta, f"static s={s}")] + line))
    dyn, sta = _arm(prose, "dynamic", 0.9), _arm(prose, "static", 0.9)
    if dyn and sta:
        out.append(_pair("DynSp beats static at s = 0.9 (real prose, 3,000 steps)",
                         "lower loss", -1, dyn, sta, "prose DynSp s=0.9", "prose static s=0.9"))
    dense_p = _arm(prose, "dense")
    if dense_p and sta:
        out.append(_pair("static s = 0.9 loses to dense BERT-Tiny (real prose)", "higher loss",
                         +1, sta, dense_p, "prose static s=0.9", "prose dense Tiny"))
    return out


def table(items: list[Claim]) -> tuple[str, list[dict[str, Any]]]:
    """The Markdown claim table and its rows as records (for claims.csv)."""
    lines = ["| claim | what the paper's mechanism predicts | ours: held-out MLM loss (mean ± sd, seeds) "
             "| difference, 95 % interval (Welch) | curves separate from step | verdict |",
             "|---|---|---|---|---|---|"]
    records = []
    for c in items:
        contrast = Contrast([(w, _losses(rows)) for w, rows, _ in c.terms])
        low, high, df = contrast.interval()
        interval = ("-" if low is None else f"[{low:+.3f}, {high:+.3f}] (df {df:.1f})")
        pair = c.pair
        sep = separation_step(*pair) if pair else None
        v = verdict(low, high, c.sign)
        ours = "; ".join(f"{name}: {_stat(rows)}" for _, rows, name in c.terms)
        formula = " ".join(f"{'+' if w > 0 else '-'} {abs(w):.2g} x {name}" if abs(w) != 1 else
                           f"{'+' if w > 0 else '-'} {name}" for w, _, name in c.terms).lstrip("+ ")
        lines.append(f"| {c.claim} | {c.prediction} | {ours} | {formula}: {contrast.value:+.3f} {interval} "
                     f"| {sep if sep is not None else ('never' if pair else '-')} | {v} |")
        records.append({"claim": c.claim, "contrast": formula, "groups": len(c.terms),
                        "n": " ".join(str(len(rows)) for _, rows, _ in c.terms),
                        "means": " ".join(f"{statistics.fmean(_losses(rows)):.4f}" for _, rows, _ in c.terms),
                        "difference": contrast.value, "low": low, "high": high, "df": df,
                        "separates_from_step": sep, "verdict": v})
    return "\n".join(lines) + "\n", records


def draw(records: list[dict[str, Any]], path: Path) -> Optional[Path]:
    """differences.png: each comparison's difference with its 95 % interval."""
    if not records:
        return None
    from bert_ipu.sweep.plotting import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(records) + 1.6))
    for i, r in enumerate(records):
        y = len(records) - 1 - i
        if r["low"] is not None:
            ax.errorbar(r["difference"], y, xerr=[[r["difference"] - r["low"]], [r["high"] - r["difference"]]],
                        fmt="o", capsize=4, color="C0")
        else:
            ax.plot(r["difference"], y, "o", color="C1")
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(records)))
    ax.set_yticklabels([r["contrast"] for r in reversed(records)], fontsize=7)
    ax.set_xlabel("difference of held-out MLM loss (nat), mean and 95 % interval (Welch)")
    ax.set_title("Each comparison of the claim table (left of 0: the first arm is better)", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def _config(run: str) -> dict[str, Any]:
    try:
        return parse_yaml_value((Path(run) / "config.yaml").read_text(encoding="utf-8"), run) or {}
    except (OSError, ValueError):
        return {}


def head_flops(run: str, sequences: float) -> Optional[float]:
    """Training FLOPs of the MLM head over the run (not in `total_flops`, docs/flops.md):
    3 passes x 2 x masked positions x (H^2 transform + H x V decoder) per sequence."""
    cfg = _config(run)
    model, data = cfg.get("model", {}), cfg.get("data", {})
    h, v, p = model.get("hidden_size"), model.get("vocab_size"), data.get("mask_tokens")
    if not (h and v and p and sequences):
        return None
    return 3 * 2 * p * (h * h + h * v) * float(sequences)


def points_table(rows: list[dict[str, Any]]) -> str:
    """One line per arm: non-embedding training FLOPs as a multiple of dense BERT-Tiny's,
    the MLM head's FLOPs relative to them, wall clock, loss and accuracy."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r.get("method"), float(r.get("sparsity") or 0.0), r.get("hidden_size")), []).append(r)
    def flops_of(rs: list[dict[str, Any]]) -> Optional[float]:
        xs = [float(r["total_flops"]) for r in rs if r.get("total_flops")]
        return statistics.fmean(xs) if xs else None

    base = flops_of([r for (m, s, h), rs in groups.items() if m == "dense" and h == 128 for r in rs])
    order = {"dense": 0, "static": 1, "dynamic": 2}
    lines = ["| arm | s | H | seeds | non-embedding training FLOPs | x dense BERT-Tiny | MLM-head FLOPs / "
             "non-embedding | wall clock (s, median) | held-out MLM loss | MLM accuracy |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (m, s, h), rs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1], kv[0][2] or 0)):
        flops = flops_of(rs)
        heads = [x for x in (head_flops(r["run"], r.get("sequences") or 0) for r in rs) if x]
        head = statistics.fmean(heads) if heads else None
        walls = [float(r["wall_s"]) for r in rs if r.get("wall_s")]
        accs = [float(r["mlm_accuracy"]) for r in rs if r.get("mlm_accuracy") is not None]
        cells = [str(m), f"{s:g}", str(h), str(len(rs)), f"{flops:.3g}" if flops else "-",
                 f"{flops / base:.3f}" if flops and base else "-",
                 f"{head / flops:.2f}" if head and flops else "-",
                 f"{statistics.median(walls):.0f}" if walls else "-",
                 _stat(rs), f"{statistics.fmean(accs):.3f}" if accs else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(runs: Path, out: Path, pages: tuple[Path, ...] = ()) -> list[Path]:
    """claims.md, claims.csv and differences.png in `out`; the claim table also into the
    `claims` block of each of `pages` (README.md, docs/results/README.md)."""
    items = claims(runs)
    md, records = table(items)
    ok, why = gate(runs / "prose_gate") if (runs / "prose_gate").is_dir() else (None, "not run")
    sections = [("dose", "Built-in corpus, B = 1, n = 160, 800 steps (`dose`)"),
                ("prose", "Real prose, 3,000 steps (`prose`)")]
    text = ["# Claim table (generated by `python -m dynsp_tools.claims`)", "", md, "",
            f"Real-prose gate (`prose_gate`): {why}.", ""]
    for folder, title in sections:
        rows = _finished(runs / folder) + (_finished(runs / "dose_extra") if folder == "dose" else [])
        if rows:
            text += [f"## {title}: every arm", "", points_table(rows), ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "claims.md").write_text("\n".join(text), encoding="utf-8")
    paths = [out / "claims.md"]
    if records:
        with open(out / "claims.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
        paths.append(out / "claims.csv")
        try:
            figure = draw(records, out / "differences.png")
            paths += [figure] if figure else []
        except ImportError:
            pass
    block = md + f"\nReal-prose gate: {why}.\n"
    for page in pages:
        if replace_block(page, "claims", block):
            paths.append(page)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dynsp_tools.claims", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=Path("runs/repro/cpu"), help="the suite's run folder")
    p.add_argument("--out", type=Path, default=Path("docs/results/cpu"), help="where claims.md goes")
    p.add_argument("--pages", type=Path, nargs="*", default=[Path("README.md"), Path("docs/results/README.md")],
                   help="pages whose <!-- claims:begin/end --> block gets the table")
    args = p.parse_args(argv)
    if not args.runs.is_dir():
        print(f"error: --runs: {args.runs} is not a folder", file=sys.stderr)
        return 2
    for path in write(args.runs, args.out, tuple(args.pages)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
