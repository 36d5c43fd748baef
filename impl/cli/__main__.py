"""`python -m impl.cli` is `paxwal`."""

from impl.cli import main

raise SystemExit(main())
