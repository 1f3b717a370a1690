"""``[tracking]``: where results, MLflow runs and TensorBoard curves go, with the MLflow
stores accepted and the experiment name checked as a plain folder name."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from ecgtune.config.base import Section, _value_error

MLFLOW_DATABASES = ("sqlite", "postgresql", "mysql", "mssql")
MLFLOW_SCHEMES = ("file", *MLFLOW_DATABASES, "http", "https", "databricks")
"""The tracking stores MLflow registers itself (``mlflow.tracking._tracking_service.utils``:
file store, SQLAlchemy databases, REST server, Databricks); a plain path is a file store. The
Unity Catalog schemes hold model registries only, and plugins' schemes are not accepted."""


class TrackingConfig(Section):
    """Where results, MLflow runs and TensorBoard curves go."""

    mlflow_uri: str = Field("sqlite:///mlflow.db", min_length=1, description="MLflow tracking URI")
    experiment: str = Field("ecg-arrhythmia", min_length=1, description="experiment name")
    tensorboard_dir: Path = Field(Path("logs"), description="TensorBoard run directories")
    output_dir: Path = Field(Path("runs"), description="results land in output_dir/experiment")
    verbose: bool = Field(
        False, description="print the model summary at each trial, and MLflow's own INFO lines"
    )
    register_model: str | None = Field(
        None,
        min_length=1,
        description="register the best model in MLflow's model registry under this name",
    )

    @field_validator("mlflow_uri")
    @classmethod
    def _mlflow_store(cls, value: str) -> str:
        scheme = uri_scheme(value)
        if scheme is None or (scheme and scheme not in MLFLOW_SCHEMES):
            raise _value_error(
                "MLflow has no tracking store for it: give a local path, a file:, sqlite:, "
                "postgresql:, mysql:, mssql:, http: or https: URI, or databricks"
            )
        return value

    @field_validator("experiment")
    @classmethod
    def _a_name_not_a_path(cls, value: str) -> str:
        problem = _name_problem(value)
        if problem:
            raise _value_error(
                f"{problem}: the experiment names a folder of tracking.output_dir and an MLflow "
                f"experiment, so it must be a plain name"
            )
        return value


def uri_scheme(uri: str) -> str | None:
    """The scheme as MLflow reads it (``postgresql+psycopg2`` -> ``postgresql``); "" for a
    local path (a one-letter scheme is a Windows drive); None when the URI does not parse."""
    try:
        scheme = urlsplit(uri).scheme.lower()
    except ValueError:
        return None
    database = scheme.split("+")[0]
    if database in MLFLOW_DATABASES:
        return database
    return "" if len(scheme) == 1 else scheme


def _name_problem(name: str) -> str | None:
    """Why ``name`` is not a plain folder name, or None."""
    if name in (".", ".."):
        return f"{name!r} is a path"
    if "/" in name or "\\" in name:
        return "it holds a path separator (/ or \\)"
    if name != name.strip():
        return "it starts or ends with whitespace"
    if any(not character.isprintable() for character in name):
        return "it holds a control character"
    return None
