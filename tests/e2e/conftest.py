"""End-to-end tests use the same isolated services as the integration tests."""

from tests.integration.conftest import base_settings, run_id  # noqa: F401 - fixtures
