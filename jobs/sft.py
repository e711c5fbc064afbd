"""VILA stage 3 (SFT: VL instructions + text-only instructions), starting from the pretrain stage's export."""

import sys

import _bootstrap  # noqa: F401
from vilaray.train import cli


def main(argv=None) -> int:
    return cli.main(__doc__, default_stages=["sft"], argv=argv)


if __name__ == "__main__":
    sys.exit(main())
