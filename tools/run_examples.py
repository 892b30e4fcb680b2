"""The main job: run every example workflow through a real headless ComfyUI server (CPU, loopback only)
with this pack installed as a custom node, and write the images and a summary to an output folder.

    scripts/run-examples.sh [--out DIR] [--checkpoint FILE.safetensors | --standin] [--only NAME ...]

Default model: the shapes-world demo model shipped in models/ (an SD1.x-architecture model trained here on
pictures of one coloured shape: tools/train_shapes.py, docs/shapes-model.md), so the edits are real on any
machine. --checkpoint FILE runs the workflows' SD1.5 twins (example_workflows/*_sd15.json: the same graphs
at 512 px, 30 steps, the papers' settings) on an SD1.x checkpoint of yours, --twin sdxl the SDXL twins (1024
px) on an SDXL one; --standin runs the demo graphs on a stand-in with SD1.5's real layer shapes and random
weights (noise pictures, full-size timings); COMFYUI_PATH selects another ComfyUI installation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tools import standin_checkpoint  # noqa: E402
from tools.comfy_server import ComfyServer  # noqa: E402
from tools.example_requirements import requires_weights  # noqa: E402
from tools.workflow_convert import ui_to_api  # noqa: E402

WORKFLOWS = REPO / "example_workflows"
EXAMPLE_IMAGE = REPO / "tools" / "assets" / "sae_example.png"


def workflow_files(only=None) -> list[Path]:
    files = sorted(WORKFLOWS.glob("*.json"))
    return [f for f in files if not only or f.stem in only]


DEMO_LOADER = "SAEdit_LoadShapesDemoModel"


def use_checkpoint(api_prompt: dict, name: str) -> None:
    """Load `name` with Load Checkpoint wherever the prompt loads the demo model (same outputs: MODEL, CLIP,
    VAE) or another checkpoint."""
    for node in api_prompt.values():
        if node["class_type"] in (DEMO_LOADER, "CheckpointLoaderSimple"):
            node["class_type"] = "CheckpointLoaderSimple"
            node["inputs"] = {"ckpt_name": name}


def run(out_dir: Path, checkpoint: Path | None = None, only=None, timeout: float = 1800,
        standin: bool = False, twin: str | None = None) -> dict:
    """Every demo-model example workflow on the embedded demo model (default) or on the stand-in; with
    `twin` ("sd15", "sdxl") the workflows' twins for that model family on `checkpoint` instead."""
    if standin:
        checkpoint = standin_checkpoint.ensure_standin_checkpoint()
    models = out_dir / ".models"
    (models / "checkpoints").mkdir(parents=True, exist_ok=True)
    if checkpoint is not None:
        checkpoint = Path(checkpoint).resolve()
        link = models / "checkpoints" / checkpoint.name
        if not link.exists():
            link.symlink_to(checkpoint)
    model_name = checkpoint.name if checkpoint else "shapes-world demo model (embedded)"
    summary = {"checkpoint": model_name, "workflows": {}, "skipped": {}}
    with ComfyServer(custom_node_dirs={"self-attention-edit": REPO}, models_dir=models, output_dir=out_dir) as server:
        shutil.copy(EXAMPLE_IMAGE, server.tmp / "base" / "input" / EXAMPLE_IMAGE.name)
        info = server.object_info()
        for path in workflow_files(only):
            workflow = json.loads(path.read_text())
            reason = requires_weights(workflow)
            if twin is not None:  # the user's checkpoint stands in for what the twins require
                reason = None if path.stem.endswith(f"_{twin}") else f"not a {twin} twin (--twin {twin})"
            if reason:  # Flux-style workflows and the twins: their weights are not the demo model's or the stand-in's
                summary["skipped"][path.stem] = reason
                sys.stderr.write(f"[examples] {path.stem}: skipped ({reason})\n")
                continue
            prompt = ui_to_api(workflow, info)
            if checkpoint is not None:
                use_checkpoint(prompt, checkpoint.name)
            start = time.perf_counter()
            entry = server.run(prompt, timeout=timeout)
            files = [str(p.relative_to(out_dir)) for p in server.output_files(entry)]
            summary["workflows"][path.stem] = {
                "title": workflow.get("extra", {}).get("sae_title", ""),
                "seconds": round(time.perf_counter() - start, 1),
                "images": files,
            }
            sys.stderr.write(f"[examples] {path.stem}: {len(files)} image(s) in "
                             f"{summary['workflows'][path.stem]['seconds']} s\n")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [f"# Example workflows ({model_name})", "", "| workflow | seconds | images |", "|---|---|---|"]
    for name, s in summary["workflows"].items():
        lines.append(f"| {name} | {s['seconds']} | {', '.join(s['images'])} |")
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n")
    shutil.rmtree(models, ignore_errors=True)
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "output", help="output folder (default: ./output)")
    ap.add_argument("--checkpoint", type=Path,
                    help="an SD1.x .safetensors checkpoint (SDXL with --twin sdxl): runs the twins of the demo "
                         "workflows at the model's native size and steps (the prompts stay the demo world's)")
    ap.add_argument("--twin", choices=("sd15", "sdxl"), default="sd15",
                    help="which twins --checkpoint runs (default sd15)")
    ap.add_argument("--standin", action="store_true",
                    help="use the stand-in (SD1.5 layer shapes, random weights: noise pictures, full-size speed)")
    ap.add_argument("--only", nargs="*", help="workflow names (file stems) to run")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    twin = args.twin if args.checkpoint is not None and not args.standin else None
    summary = run(args.out.resolve(), args.checkpoint, args.only, standin=args.standin, twin=twin)
    sys.stderr.write(f"[examples] wrote {sum(len(s['images']) for s in summary['workflows'].values())} images and "
                     f"summary.md to {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
