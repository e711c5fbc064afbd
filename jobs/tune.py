"""Ray Tune over vilaray's stage runner: data-mix ratios and freezing schedules, ASHA on in-training scores."""

import sys

import _bootstrap  # noqa: F401
from vilaray.tune import cli


def main(argv=None) -> int:
    return cli.main(__doc__, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
