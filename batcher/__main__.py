"""Let `python -m batcher` behave like the `batcher` command."""

from batcher.cli import main

raise SystemExit(main())
