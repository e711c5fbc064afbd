"""Generate the synthetic shapes world and build the tiny tokenizer + VLM assets from it (no downloads)."""

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import _bootstrap  # noqa: F401
from vilaray.console import quiet_console
from vilaray.synth.assets import build_assets
from vilaray.synth.world import SCALES, build_world


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="artifacts/shapes")
    p.add_argument("--assets", default="artifacts/tiny-vlm")
    p.add_argument("--scale", default="small")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--photo", action="store_true", help="also write the photo-like ~512 px JPEG variant")
    p.add_argument("--logs", default="runs/make_world", help="folder for library logs (default: %(default)s)")
    p.add_argument(
        "--sequence-distractors",
        type=float,
        default=0.0,
        metavar="P",
        help="an in-context-learning probe: the share of sft_messages' short-answer image sequences' later turns "
        "that ask what an earlier image answers otherwise (default 0: the shipped world)",
    )
    args = p.parse_args(argv)
    if not 0.0 <= args.sequence_distractors <= 1.0:
        p.error(f"--sequence-distractors must be within [0, 1], got {args.sequence_distractors}")
    scale = dataclasses.replace(SCALES.get(args.scale), sequence_distractors=args.sequence_distractors)
    quiet_console(Path(args.logs))  # transformers' save-time warnings and bars go to <logs>/logs
    t0 = time.time()
    manifest = build_world(args.out, seed=args.seed, scale=scale, photo=args.photo)
    print(
        f"world: {args.out} ({time.time() - t0:.1f}s): scale {manifest.scale.name}, seed {manifest.seed}, "
        f"photo variant {'yes' if manifest.photo else 'no'}, {sum(len(f) for f in manifest.files.values())} files"
    )
    t0 = time.time()
    build_assets(args.out, args.assets)
    print(f"tiny assets: {args.assets} ({time.time() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
