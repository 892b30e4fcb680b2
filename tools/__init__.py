"""Development tools for running workflows through a real headless ComfyUI (not part of the node pack).

- comfy_env: where ComfyUI and the cache live; importing ComfyUI in CPU mode.
- standin_checkpoint: a random-weight SD1.5 checkpoint with the real layer shapes and key names.
- comfy_server: a ComfyUI server in a subprocess, loopback only, with the pack loaded.
- workflow_convert: UI-format workflow JSON -> API-format prompt, as the front end does it.
"""
