"""Training: config, optimizer, steps, orbax checkpoints, metrics, plots, loop."""

from moejax.train.checkpoint import CheckpointError, Checkpointer
from moejax.train.config import ExperimentConfig, TrainConfig, experiment_from_config
from moejax.train.loop import RunSummary, TrainingError, check_on_devices, train_and_evaluate

__all__ = ["CheckpointError", "Checkpointer", "ExperimentConfig", "RunSummary", "TrainConfig",
           "TrainingError", "check_on_devices", "experiment_from_config", "train_and_evaluate"]
