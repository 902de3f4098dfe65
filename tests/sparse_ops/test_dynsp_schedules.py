"""Update-step table and prune-ratio schedules (sparse_ops/dynsp/schedules.py)."""
from __future__ import annotations

import doctest
import importlib
import math

import pytest

from sparse_ops.dynsp import schedules
from sparse_ops.dynsp.schedules import UpdateSchedule, prune_ratio, update_steps

DYNSP_MODULES = ["schedules", "prune", "regrow", "methods", "distribution", "metrics", "remap",
                 "sync", "controller"]


@pytest.mark.parametrize("name", DYNSP_MODULES + ["flops"])
def test_docstring_examples(name):
    mod = importlib.import_module("sparse_ops.flops" if name == "flops" else f"sparse_ops.dynsp.{name}")
    result = doctest.testmod(mod, verbose=False)
    assert result.failed == 0


@pytest.mark.parametrize("total, n, end_fraction, expected", [
    (100, 3, 1.0, [25, 50, 75]),
    (10, 4, 1.0, [2, 4, 6, 8]),             # 10/5 = 2
    (10, 3, 1.0, [2, 5, 7]),                # floor(2.5), floor(5), floor(7.5)
    (1000, 4, 0.5, [100, 200, 300, 400]),   # T_end = 500
    (1000, 2, 0.1, [33, 66]),               # T_end = 100 exactly (decimal reading of 0.1)
    (7, 0, 1.0, []),                        # static
    (161, 160, 1.0, list(range(1, 161))),   # one step apart
])
def test_update_step_table(total, n, end_fraction, expected):
    assert update_steps(total, n, end_fraction) == expected


def test_update_steps_default_count_and_last_step_inside_run():
    steps = update_steps(100_000, 160)
    assert len(steps) == 160 and steps[0] == 621 and steps[-1] == 99_378  # floor(k * 100000 / 161)
    assert steps == sorted(set(steps)) and steps[-1] < 100_000


def test_prune_ratio_table():
    cos = [prune_ratio(t, 0.5, 100) for t in (0, 25, 50, 75, 100, 150)]
    expected = [0.5, 0.25 * (1 + math.cos(math.pi / 4)), 0.25, 0.25 * (1 - math.cos(math.pi / 4)), 0.0, 0.0]
    assert cos == pytest.approx(expected, abs=1e-15)
    assert [prune_ratio(t, 0.3, 100, "constant") for t in (0, 60)] == [0.3, 0.3]
    assert [prune_ratio(t, 0.4, 100, "linear") for t in (0, 25, 100)] == pytest.approx([0.4, 0.3, 0.0])


def test_update_schedule_object():
    s = UpdateSchedule(total_steps=1000, n_updates=4, prune_ratio=0.5, end_fraction=0.5)
    assert s.steps == (100, 200, 300, 400) and s.t_end == 500.0
    assert [s.is_update(t) for t in (99, 100, 101)] == [False, True, False]
    assert s.update_index(300) == 2
    assert s.compute(250) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="'step'"):
        s.update_index(101)


@pytest.mark.parametrize("call, arg", [
    (lambda: update_steps(0, 3), "total_steps"),
    (lambda: update_steps(100, -1), "n_updates"),
    (lambda: update_steps(10, 20), "n_updates"),          # updates would collide
    (lambda: update_steps(100, 3, 1.5), "end_fraction"),
    (lambda: update_steps(100, 3, 0.0), "end_fraction"),
    (lambda: prune_ratio(1, 0.5, 100, "step"), "schedule"),
    (lambda: prune_ratio(1, 1.5, 100), "pr_max"),
    (lambda: prune_ratio(1, 0.5, 0), "t_end"),
    (lambda: UpdateSchedule(100, 3, prune_schedule="exp"), "prune_schedule"),
    (lambda: UpdateSchedule(100, 3, prune_ratio=-0.1), "prune_ratio"),
])
def test_errors_name_the_argument(call, arg):
    with pytest.raises(ValueError, match=f"'{arg}'"):
        call()


def test_registry_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        schedules._register("cosine")(lambda s, p, t: p)
