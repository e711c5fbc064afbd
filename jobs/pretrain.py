"""VILA stages 1 (align: projector only) and 2 (VL pretraining: projector + LLM), or one with --stage."""

import sys

import _bootstrap  # noqa: F401
from vilaray.train.cli import main

if __name__ == "__main__":
    sys.exit(main(__doc__, default_stages=["align", "pretrain"]))
