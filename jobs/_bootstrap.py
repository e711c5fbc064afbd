"""Shared by every job: make `import vilaray` work from a plain clone (platform/ is the source root)."""

import os
import sys
from pathlib import Path

PLATFORM = Path(__file__).resolve().parent.parent / "platform"

try:
    import vilaray  # noqa: F401  (installed, or shipped in the job's runtime environment)
except ImportError:
    sys.path.insert(0, str(PLATFORM))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
