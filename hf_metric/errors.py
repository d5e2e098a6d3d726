"""User-facing errors: each one is printed as a single line by the CLI, which then exits with code 2."""

from __future__ import annotations


class HfMetricUserError(Exception):
    """Bad input from the user (config or data). The message is the whole story: no traceback is shown."""

    exit_code = 2


class ConfigError(HfMetricUserError, ValueError):
    """A YAML config key is unknown, has the wrong type, or holds an impossible value."""


class DataError(HfMetricUserError, ValueError):
    """A Parquet file is missing a column, or a row holds a value the trainer cannot use."""


class TrainingDivergedError(HfMetricUserError, RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient norm; the run stopped, and its last
    good checkpoint is kept (`training.max_nonfinite_steps`)."""

    exit_code = 3
