"""Let `python -m bench` run the benchmarks."""

from bench.run import main

raise SystemExit(main())
