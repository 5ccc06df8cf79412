"""How a training step talks to the console: progress bars when interactive, warnings only in
batch jobs and tests."""
from __future__ import annotations

import logging
import sys
import warnings


def console_setup() -> bool:
    """Whether the console is interactive (then: progress bar and Lightning's info lines);
    otherwise (tests, batch jobs) only warnings. Silences the expected num_workers=0 warning and
    a deprecation warning internal to Lightning 2.6."""
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    interactive = sys.stderr.isatty()
    logging.getLogger("lightning.pytorch").setLevel(logging.INFO if interactive else logging.WARNING)
    return interactive
