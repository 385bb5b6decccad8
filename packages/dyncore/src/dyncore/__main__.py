"""``python -m dyncore count|gallery ...`` (same as the ``dyncore`` script)."""

from __future__ import annotations

from dyncore.cli import main

if __name__ == "__main__":
    main()
