"""prunebench command line: thin Typer commands that parse arguments and call one function.

One module per group of commands, registered in the order ``--help`` lists them. Heavy
libraries (torch, MMDetection) are imported inside the functions that need them, so
``--help``, ``plan``, ``status`` and ``report`` start fast.
"""

# isort: off
from . import studies, models, checkpoints, data  # noqa: F401  (registers the commands)

# isort: on
from .main import app

__all__ = ["app"]
