"""Shared test settings. ``RDFCIL_TEST_DEVICE`` (default ``cpu``) is the device of every
end-to-end test: ``RDFCIL_TEST_DEVICE=cuda make test`` runs the suite on a GPU."""

import os

import pytest

TEST_DEVICE = os.environ.get("RDFCIL_TEST_DEVICE", "cpu")


@pytest.fixture
def test_device() -> str:
    return TEST_DEVICE
