"""What an example workflow needs beyond the embedded demo model: extra.sae_requires in its file, written
by tools/build_workflows.py for the Flux-style workflows:

    "sae_requires": {"models": {"diffusion_models": ["flux1-dev.safetensors"], ...}, "reason": "needs ..."}

Workflows with it are loaded in the browser test and converted to API format, but not run on the demo
model or the stand-in (tests/test_example_workflows.py, tools/run_examples.py), and their thumbnails are
labelled schematics (tools/make_thumbnails.py). No imports beyond the standard library: the test
fixtures use it."""

from __future__ import annotations

import json
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "example_workflows"


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def requires_weights(workflow: dict) -> str | None:
    """Why a workflow (the file's dict) cannot run on the demo model or the stand-in, or None."""
    req = workflow.get("extra", {}).get("sae_requires")
    return req["reason"] if req else None


def required_models(paths=None) -> dict[str, list[str]]:
    """{model folder kind: sorted file names} the given workflow files (default: every example) expect."""
    out: dict[str, set[str]] = {}
    for path in sorted(EXAMPLES.glob("*.json")) if paths is None else paths:
        for kind, names in (load(path).get("extra", {}).get("sae_requires") or {}).get("models", {}).items():
            out.setdefault(kind, set()).update(names)
    return {kind: sorted(names) for kind, names in out.items()}


def place_empty_models(models_dir: Path, paths=None) -> list[Path]:
    """Create empty stand-ins of the model files the workflows expect under models_dir/<kind>/, so a
    server lists them in its loaders' combos (the workflows then load without 'not an option' errors);
    they are never loaded. Existing files are left alone. Returns the files created."""
    made = []
    for kind, names in required_models(paths).items():
        (Path(models_dir) / kind).mkdir(parents=True, exist_ok=True)
        for name in names:
            f = Path(models_dir) / kind / name
            if not f.exists():
                f.write_bytes(b"")
                made.append(f)
    return made
