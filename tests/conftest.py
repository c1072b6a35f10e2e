"""Shared pytest fixtures."""

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """A numpy Generator with a fixed seed, so every test sees the same random data."""
    return np.random.default_rng(20240601)


@pytest.fixture(scope="session")
def gpu():
    """The GPU device (lavapipe in CI). Skips without one, except under CI=true, where a GPU
    test that cannot run is a failure (.ci/run installs mesa-vulkan-drivers and wgpu)."""
    import os

    import batchgrad as bg

    try:
        return bg.gpu.device.get()
    except bg.gpu.GpuUnavailableError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"GPU tests must run in CI: {e}")
        pytest.skip(str(e))
