"""Shared fixtures: the real ComfyUI (COMFYUI_PATH), the pack loaded by ComfyUI's own loader, tiny models."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import testbed  # noqa: E402


@pytest.fixture(scope="session")
def pack():
    """The pack module as ComfyUI's custom-node loader imported it."""
    return testbed.load_pack()


@pytest.fixture(scope="session")
def sae(pack):
    """Access to the pack's submodules: sae('sae_math.eigen'), sae('sae_patches.weights'), sae('nodes.node_apply')."""
    return testbed.pack_module


@pytest.fixture(scope="session", params=testbed.FAMILIES)
def family(request):
    return request.param


@pytest.fixture(autouse=True)
def _clean_eigen_cache(pack):
    """Each test starts with an empty directions cache (the cache itself is tested explicitly)."""
    testbed.pack_module("sae_patches.weights").EIGEN_CACHE.clear()
    yield

from conftest_server import *  # noqa: E402,F401,F403  (real-server fixtures, marker `server`)
