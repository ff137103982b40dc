"""``python -m dml``: runs :func:`dml.cli.main`."""
import sys

from .cli import main

sys.exit(main())
