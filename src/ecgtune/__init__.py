"""ecgtune: train and tune deep-learning classifiers of ECG heartbeats from a TOML config."""

__version__ = "0.1.0"
