"""``python -m pyagingrt`` is the ``agingrt`` command."""

from pyagingrt.cli.main import main

raise SystemExit(main())
