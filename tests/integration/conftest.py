"""Fixtures shared by the integration tests."""

import pytest

import duplexthreads


@pytest.fixture(params=list(duplexthreads.BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    """Each client backend in turn."""
    return str(request.param)
