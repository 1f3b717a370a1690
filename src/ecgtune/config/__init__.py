"""The experiment's typed schema: defaults, validation and documentation in one place.

Every section of ``config.toml`` is a pydantic model that forbids unknown keys, so a typo is
caught before any work starts. :func:`load_config` turns every problem (missing, empty or
non-UTF-8 file, TOML syntax, unknown key, wrong type, value out of range, a ``--set`` override
that does not parse) into one :class:`ConfigError` whose message names the key path, the bad
value and what is allowed; the command line prints it on one line and exits with status 2.

One module per section, each built on the shared machinery of :mod:`.base` (the
:class:`Section` base, the one-line errors, the refusal of values of the wrong TOML type):
:mod:`.data`, :mod:`.model`, :mod:`.training` (with augment), :mod:`.search` (with its
distributions), :mod:`.inference` and :mod:`.tracking`; :mod:`.experiment` holds the root
:class:`Config` and the rules across sections, and :mod:`.loading` reads files and ``--set``
overrides into it. Callers import every name from here.
"""

from ecgtune.config.base import (
    AAMI_CLASSES,
    CPU_CORES,
    EXPECTED,
    VALUE_KINDS,
    Section,
    coercion_problem,
    union_members,
)
from ecgtune.config.data import (
    MAX_CLASSES,
    MAX_LEADS,
    MITDB_CHANNELS,
    DataConfig,
    ResampleConfig,
)
from ecgtune.config.experiment import (
    MAX_SEED,
    Config,
)
from ecgtune.config.inference import (
    InferenceConfig,
)
from ecgtune.config.loading import (
    MAX_CONFIG_BYTES,
    config_toml,
    describe_error,
    load_config,
    parse_overrides,
    read_config_file,
    schema_field,
    unknown_key_message,
    validate_config,
)
from ecgtune.config.model import (
    CNN_HEAD_KEYS,
    CONV_STAGE_KEYS,
    PER_ENTRY_BOUNDS,
    PER_LAYER_KEYS,
    RHYTHM_SELECTIONS,
    RNN_ONLY_KEYS,
    Activation,
    ModelConfig,
    Pooling,
    RRFeatures,
    RRHead,
    RRReference,
    check_model_fits,
)
from ecgtune.config.search import (
    DISTRIBUTION_KINDS,
    THIRTY_DAYS_SECONDS,
    Distribution,
    SearchConfig,
    option_label,
)
from ecgtune.config.tracking import (
    MLFLOW_DATABASES,
    MLFLOW_SCHEMES,
    TrackingConfig,
    uri_scheme,
)
from ecgtune.config.training import (
    ECTOPIC_OBJECTIVES,
    AugmentConfig,
    Metric,
    TrainingConfig,
)

__all__ = [
    "AAMI_CLASSES",
    "CNN_HEAD_KEYS",
    "CONV_STAGE_KEYS",
    "CPU_CORES",
    "DISTRIBUTION_KINDS",
    "ECTOPIC_OBJECTIVES",
    "EXPECTED",
    "MAX_CLASSES",
    "MAX_CONFIG_BYTES",
    "MAX_LEADS",
    "MAX_SEED",
    "MITDB_CHANNELS",
    "MLFLOW_DATABASES",
    "MLFLOW_SCHEMES",
    "PER_ENTRY_BOUNDS",
    "PER_LAYER_KEYS",
    "RHYTHM_SELECTIONS",
    "RNN_ONLY_KEYS",
    "THIRTY_DAYS_SECONDS",
    "VALUE_KINDS",
    "Activation",
    "AugmentConfig",
    "Config",
    "DataConfig",
    "Distribution",
    "InferenceConfig",
    "Metric",
    "ModelConfig",
    "Pooling",
    "RRFeatures",
    "RRHead",
    "RRReference",
    "ResampleConfig",
    "SearchConfig",
    "Section",
    "TrackingConfig",
    "TrainingConfig",
    "check_model_fits",
    "coercion_problem",
    "config_toml",
    "describe_error",
    "load_config",
    "option_label",
    "parse_overrides",
    "read_config_file",
    "schema_field",
    "union_members",
    "unknown_key_message",
    "uri_scheme",
    "validate_config",
]
