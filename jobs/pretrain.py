"""VILA stages 1 (align: projector only) and 2 (VL pretraining: projector + LLM), or one with --stage."""

import sys

import _bootstrap  # noqa: F401
from vilaray.train import cli


def main(argv=None) -> int:
    return cli.main(__doc__, default_stages=["align", "pretrain"], argv=argv)


if __name__ == "__main__":
    sys.exit(main())
