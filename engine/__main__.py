"""``python -m engine`` is the ``sori`` command."""

from engine.cli import main

raise SystemExit(main())
