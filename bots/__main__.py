"""``python -m bots run --config bots.toml``."""

from bots.runtime.cli import main

raise SystemExit(main())
