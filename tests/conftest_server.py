"""Fixtures for tests that run a real ComfyUI server (marker `server`). Import from tests/conftest.py:

    from conftest_server import *  # noqa: F401,F403

Deselect them with `-m "not server"`. One server per test session, started lazily by the first test that
asks for it, with this repository loaded as the custom node pack "self-attention-edit" and the stand-in
SD1.5 checkpoint (generated into the cache on first use, ~30 s, 2.1 GB).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # for `tools`; appended so ComfyUI's own modules keep precedence

from tools.comfy_server import ComfyServer  # noqa: E402
from tools.example_requirements import place_empty_models  # noqa: E402
from tools.standin_checkpoint import FILENAME as STANDIN_NAME  # noqa: E402
from tools.standin_checkpoint import ensure_standin_checkpoint  # noqa: E402

PACK_NAME = "self-attention-edit"
# A file that is listed as a checkpoint but cannot be loaded: makes an execution error on demand.
BROKEN_CHECKPOINT = "sae-broken.safetensors"

__all__ = ["pytest_configure", "standin_checkpoint", "server_models_dir", "comfy_server", "object_info",
           "STANDIN_NAME", "BROKEN_CHECKPOINT", "PACK_NAME"]


def pytest_configure(config):
    config.addinivalue_line("markers", "server: runs a real ComfyUI server")


@pytest.fixture(scope="session")
def standin_checkpoint() -> Path:
    return ensure_standin_checkpoint()


@pytest.fixture(scope="session")
def server_models_dir(standin_checkpoint, tmp_path_factory) -> Path:
    """A models/ folder for the server: the stand-in checkpoint (symlinked), a broken one, and empty
    stand-ins of the files the Flux example workflows expect (listed by the loaders, never loaded)."""
    models = tmp_path_factory.mktemp("models")
    (models / "checkpoints").mkdir()
    (models / "checkpoints" / STANDIN_NAME).symlink_to(standin_checkpoint)
    (models / "checkpoints" / BROKEN_CHECKPOINT).write_bytes(b"not a safetensors file")
    place_empty_models(models)
    return models


@pytest.fixture(scope="session")
def comfy_server(server_models_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("comfy-output")
    with ComfyServer(custom_node_dirs={PACK_NAME: REPO}, models_dir=server_models_dir, output_dir=output) as srv:
        yield srv


@pytest.fixture(scope="session")
def object_info(comfy_server) -> dict:
    return comfy_server.object_info()
