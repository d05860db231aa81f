"""``python -m app`` is the same as the ``portfolio-stream`` console script."""

from app.cli import main

raise SystemExit(main())
