"""Dev evaluations during training: the curve (evals.csv), the best step and early stopping.

With a dev part (data spec --dev-fraction: rows held out of the training part, never the
validation rows) the trainer evaluates it every --eval-every optimizer steps and at each epoch
end. The best step is the one with the highest dev accuracy (the earliest on ties: fewer steps
for the same score); its trainable parameters are kept in run_dir/best, and the run's final
outputs (validation predictions, submission, adapter) come from them. --patience P stops the
run after P evaluations without a better dev accuracy. Every count here is derived from the
evaluations recorded so far, which each checkpoint carries, so a resumed run stops where an
uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from jax_lora.checkpoint import Checkpoints

BEST = "best"  # run_dir/best/<step>/: the best step's trainable parameters


@dataclass
class DevTracker:
    patience: int                                    # 0: never stop early
    evals: list[dict] = field(default_factory=list)  # evals.csv rows, in step order

    @property
    def best(self) -> dict | None:
        """The evaluation with the highest dev accuracy, the earliest of equals."""
        if not self.evals:
            return None
        top = max(row["dev_accuracy"] for row in self.evals)
        return next(row for row in self.evals if row["dev_accuracy"] == top)

    def record(self, row: dict) -> bool:
        """Add an evaluation (replacing one at the same step, as a resumed run redoes it);
        True when it is the new best."""
        self.evals = [r for r in self.evals if r["step"] < row["step"]] + [row]
        return self.best is row

    def since_best(self) -> int:
        """Evaluations after the best one."""
        best = self.best
        return 0 if best is None else sum(row["step"] > best["step"] for row in self.evals)

    def exhausted(self) -> bool:
        return self.patience > 0 and self.since_best() >= self.patience

    def truncate(self, step: int) -> None:
        """Forget evaluations after `step` (a resume redoes them)."""
        self.evals = [row for row in self.evals if row["step"] <= step]

    def summary(self) -> dict | None:
        """The manifest's `best`."""
        best = self.best
        return None if best is None else {"step": best["step"],
                                          "dev_accuracy": best["dev_accuracy"],
                                          "dev_loss": best["dev_loss"]}


class BestCheckpoint:
    """run_dir/best: the trainable parameters of the best step so far, one step kept."""

    def __init__(self, run_dir: Path):
        self.checkpoints = Checkpoints(run_dir, keep=1, folder=BEST)

    def forget_after(self, step: int) -> None:
        """Drop a best step newer than `step`: the resumed run evaluates it again (orbax saves
        only steps above the newest it holds)."""
        for saved in self.checkpoints.manager.all_steps():
            if saved > step:
                self.checkpoints.manager.delete(saved)

    def check(self, trainable) -> None:
        """RunStateError (one line, says --restart) when the kept step is damaged: with no
        older one to fall back to, a resume stops here rather than at the run's end."""
        self.checkpoints.check_latest(trainable)

    def save(self, step: int, trainable) -> None:
        if self.checkpoints.latest_step() != step:  # a resumed run re-evaluating the same step
            self.checkpoints.save(step, trainable, (), {"step": step})

    def restore(self, trainable):
        """The best step's trainable parameters, shaped like `trainable`."""
        return self.checkpoints.restore(trainable, ())[0]

    def close(self) -> None:
        self.checkpoints.close()
