"""The commands of ``hypertune.py``: each wires the config, the console, tracking and the
domain modules (data, models, training, metrics, search) together. Nothing below imports
from here."""
