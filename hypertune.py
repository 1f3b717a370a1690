"""Entry point: ``python hypertune.py [tune|train|data|evaluate] [--config config.toml]``."""

import sys

from ecgtune.cli import main

if __name__ == "__main__":
    sys.exit(main())
