"""``python -m cli`` is ``vsearch``."""

from cli.main import main

raise SystemExit(main())
