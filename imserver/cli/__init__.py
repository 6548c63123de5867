"""Command line: ``python -m imserver serve | token | user | audit | store | keys | governance``.

``main.py`` parses; each subcommand lives in the module named after it
(``serve``, ``users``, ``audit``, ``store``, ``keys``, ``governance``);
``context.py`` holds what they share.
"""

from imserver.cli.audit import verify_audit
from imserver.cli.main import main

__all__ = ["main", "verify_audit"]
