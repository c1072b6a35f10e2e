"""Shared pytest fixtures."""

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """A numpy Generator with a fixed seed, so every test sees the same random data."""
    return np.random.default_rng(20240601)
