"""Experiment tracking: MLflow runs and TensorBoard event files."""
