"""``python -m tests.api.cli_with_test_models ARGS`` is ``agingrt ARGS`` with the test-only models registered
(pipeline_adapters.py), so tests drive the real CLI in a subprocess before the four models exist."""

from pyagingrt.cli.main import main
from pyagingrt.models import registry
from tests.api.pipeline_adapters import TEST_ADAPTERS

registry._ADAPTERS.update(TEST_ADAPTERS)
raise SystemExit(main())
