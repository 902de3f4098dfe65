"""Experiment trackers a run reports to (`logging.trackers`): TensorBoard, Weights & Biases,
MLflow and a CSV file, all offline by default.

    tensorboard  event files in <output_dir>/tensorboard (installed by the set-up command)
    wandb        `wandb` package; offline unless WANDB_MODE says otherwise (files under
                 <tracker_dir>/wandb; `wandb sync` uploads them later); one run per
                 output folder (a resumed run continues it), grouped by tracker_group
    mlflow       `mlflow-skinny` (or `mlflow`); MLFLOW_TRACKING_URI if set, else a file
                 store in <tracker_dir>/mlruns (`mlflow ui --backend-store-uri ...`);
                 experiment = tracker_group or tracker_project
    csv          <output_dir>/metrics.csv, one `step,name,value` row per value

Every tracker gets the same names: `train/...`, `eval/...`, `dynsp/...` (pattern updates),
`dynsp_layers/...` (per layer), and the run's config as flat hyper-parameters. The
packages are imported here only, when a run asks for them; `check_trackers` names a
missing one before any work starts.
"""
from __future__ import annotations

import csv
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from bert_ipu.schema import ConfigError

log = logging.getLogger(__name__)

# name -> (module to import, what to pip install)
PACKAGES: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "csv": ("csv", ""),
}
TRACKERS = tuple(PACKAGES)
TENSORBOARD_DIR, CSV_FILE = "tensorboard", "metrics.csv"
"""What the tensorboard and csv trackers write in the output folder."""


class TrackerError(ConfigError):
    """A tracker that cannot be used (not installed); the message names the package."""


@dataclass(frozen=True)
class TrackerRun:
    """What a tracker needs to know about the run."""

    output_dir: Path
    name: str
    project: str
    group: str | None = None
    directory: Path | None = None
    """Where offline tracker files go (null: the output folder)."""
    params: Mapping[str, Any] = field(default_factory=dict)
    """Flat hyper-parameters (`section.key` -> value)."""
    run_id: str = ""
    """This run's id in the trackers: drawn at a fresh start and kept in the checkpoints,
    so a resumed run reports to the same W&B / MLflow run and a fresh start in the same
    folder to a new one."""

    @property
    def root(self) -> Path:
        return Path(self.directory) if self.directory is not None else Path(self.output_dir)


class Tracker(Protocol):
    def log(self, step: int, values: Mapping[str, float]) -> None: ...

    def truncate_after(self, step: int) -> None: ...

    def close(self) -> None: ...


def check_trackers(names: tuple[str, ...]) -> None:
    """TrackerError naming the package of the first requested tracker that is not
    installed (before any data is prepared or a model built)."""
    for name in names:
        module, package = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise TrackerError(
                f"logging.trackers: {name!r} needs the package {package!r}, which is not "
                f"installed (pip install {package}, or pip install -e '.[trackers]'); or "
                f"remove {name!r} from logging.trackers")


def open_trackers(names: tuple[str, ...], run: TrackerRun) -> list[Tracker]:
    """One open tracker per name, in order (their hyper-parameters logged)."""
    check_trackers(names)
    return [OPENERS[name](run) for name in names]


# ----------------------------------------------------------------------------- trackers
class TensorBoardTracker:
    def __init__(self, run: TrackerRun) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(Path(run.output_dir) / TENSORBOARD_DIR))
        if run.params:
            self._writer.add_text("config", "\n".join(
                f"    {k}: {v}" for k, v in sorted(run.params.items())), 0)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self._writer.add_scalar(key, value, step)

    def truncate_after(self, step: int) -> None:
        """TensorBoard shows the newest value of a step written again after a resume."""

    def close(self) -> None:
        self._writer.close()


class WandbTracker:
    def __init__(self, run: TrackerRun) -> None:
        import wandb

        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        run.root.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(project=run.project, group=run.group, name=run.name,
                               id=run.run_id or None, resume="allow", dir=str(run.root),
                               config=dict(run.params), reinit="create_new")

    def log(self, step: int, values: Mapping[str, float]) -> None:
        self._run.log(dict(values), step=step)

    def truncate_after(self, step: int) -> None:
        """W&B keeps the steps it has; a resumed run logs the later ones again."""

    def close(self) -> None:
        self._run.finish()


class MlflowTracker:
    def __init__(self, run: TrackerRun) -> None:
        import mlflow

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # MLflow 3 keeps its file store in maintenance mode: allowed explicitly
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run.root / "mlruns").resolve().as_uri()
        self._client = mlflow.MlflowClient(tracking_uri=uri)
        experiment = run.group or run.project
        found = self._client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else self._client.create_experiment(experiment)
        runs = self._client.search_runs([exp_id], f"tags.dynsp_run_id = '{run.run_id}'") \
            if run.run_id else []
        if runs:  # a resumed run continues its MLflow run
            self._id = runs[0].info.run_id
        else:
            self._id = self._client.create_run(exp_id, run_name=run.name, tags={
                "dynsp_run_id": run.run_id, "output_dir": str(run.output_dir),
                **({"group": run.group} if run.group else {})}).info.run_id
            params = [mlflow.entities.Param(k, str(v)[:500]) for k, v in run.params.items()]
            for i in range(0, len(params), 100):  # MLflow's batch limit
                self._client.log_batch(self._id, params=params[i:i + 100])
        self._metric = mlflow.entities.Metric

    def log(self, step: int, values: Mapping[str, float]) -> None:
        import time

        now = int(time.time() * 1000)
        metrics = [self._metric(k.replace(":", "_"), float(v), now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self._client.log_batch(self._id, metrics=metrics[i:i + 1000])

    def truncate_after(self, step: int) -> None:
        """MLflow keeps the steps it has; a resumed run logs the later ones again."""

    def close(self) -> None:
        self._client.set_terminated(self._id)


class CsvTracker:
    """<output_dir>/metrics.csv: `step,name,value` rows (long form: any set of names)."""

    HEADER = ["step", "name", "value"]

    def __init__(self, run: TrackerRun) -> None:
        self.path = Path(run.output_dir) / CSV_FILE
        new = not self.path.exists()
        self._handle = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._handle)
        if new:
            self._writer.writerow(self.HEADER)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self._writer.writerow([step, key, repr(float(value))])
        self._handle.flush()

    def truncate_after(self, step: int) -> None:
        """Keep the rows of steps <= `step` (resume: the later ones are logged again)."""
        self._handle.close()
        with open(self.path, newline="", encoding="utf-8") as handle:
            rows = [r for r in csv.reader(handle)][1:]
        kept = [r for r in rows if r and r[0].isdigit() and int(r[0]) <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([self.HEADER, *kept])
        os.replace(tmp, self.path)
        self._handle = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._handle)

    def close(self) -> None:
        self._handle.close()


OPENERS: dict[str, Callable[[TrackerRun], Tracker]] = {
    "tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker,
    "csv": CsvTracker,
}
