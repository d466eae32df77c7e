"""Where a run's records go: ``metrics.jsonl`` and TensorBoard scalars on the chief, nothing elsewhere."""
from __future__ import annotations

from textstream._tf import tf
from textstream.fsutil import space_checked
from textstream.model.run import RunPaths


class MetricsLog:
    """The chief's record of a run: ``metrics.jsonl`` lines, and their numbers as TensorBoard scalars."""

    def __init__(self, paths: RunPaths):
        self.paths = paths
        paths.end_metrics_line()  # a line cut short by a crash or an edit stays apart from the next record
        self.writer = tf.summary.create_file_writer(str(paths.tensorboard))

    def write(self, record: dict) -> None:
        """One record: a line of ``metrics.jsonl`` and its numbers as scalars (a full disk: ``NoSpace``)."""
        self.paths.append_metrics(record)
        with space_checked(self.paths.tensorboard), self.writer.as_default(step=record["step"]):
            for k, v in record.items():
                if k not in ("kind", "step") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    tf.summary.scalar(f"{record['kind']}/{k}", v)

    def flush(self) -> None:
        with space_checked(self.paths.tensorboard):
            self.writer.flush()


class NoLog:
    """What the other workers log: nothing."""

    def write(self, record: dict) -> None:
        pass

    def flush(self) -> None:
        pass
