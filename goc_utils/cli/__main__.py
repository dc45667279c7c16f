"""``python -m goc_utils.cli`` (what ``torchrun ... -m goc_utils.cli eval ...`` runs)."""

from goc_utils.cli import main

raise SystemExit(main())
