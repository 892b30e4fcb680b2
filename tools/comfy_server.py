"""A real ComfyUI server in a subprocess, loopback only, with custom node packs loaded from outside its tree.

    with ComfyServer(comfyui_path, custom_node_dirs={"self-attention-edit": repo}, models_dir=models) as srv:
        entry = srv.run(api_prompt)          # queue + wait; raises ComfyExecutionError on failure
        entry["outputs"]["9"]["images"]       # [{"filename", "subfolder", "type"}]

Nothing is written into the ComfyUI tree: --base-directory points at a temporary folder (user, input, temp,
custom_nodes, database), and a temporary extra_model_paths.yaml adds a `custom_nodes:` folder holding
symlinks to the packs plus the model folders under `models_dir`. The server log is kept in a file.
Only the standard library is used to talk to the server (urllib; /history is polled, no websocket).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

from tools import comfy_env

HOST = "127.0.0.1"
# Model folder kinds mapped from models_dir/<kind> (ComfyUI's own names; missing folders are harmless).
MODEL_KINDS = ("checkpoints", "loras", "vae", "embeddings", "controlnet", "clip", "text_encoders",
               "diffusion_models", "upscale_models", "clip_vision", "hypernetworks")
LOGS_KEPT = 20
TEMP_PREFIX = "sae-comfyui-"


class ComfyError(RuntimeError):
    """The server refused a request (e.g. a prompt that fails validation: see .body['node_errors'])."""

    def __init__(self, message: str, body=None):
        super().__init__(message)
        self.body = body


class ComfyExecutionError(ComfyError):
    """A queued prompt failed while executing; .body is the history entry."""


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn (Linux): SIGTERM the server when the process that started it dies, even by SIGKILL, so a
    crashed test run leaves no server behind. Tied to the starting thread: start servers from a thread
    that outlives them (normally the main thread)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort only
        pass


def _remove_stale_temp_dirs() -> None:
    """Temporary folders left by runs that were killed (their owner.pid is no longer alive)."""
    for tmp in Path(tempfile.gettempdir()).glob(TEMP_PREFIX + "*"):
        try:
            pid = int((tmp / "owner.pid").read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (OSError, ValueError):
            continue


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _exited(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` for a child to exit, without reaping it (it stays a zombie, holding its pid)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _as_named_dirs(dirs) -> dict[str, Path]:
    """{folder name in custom_nodes: pack directory}; a plain path is named after its last component."""
    if dirs is None:
        return {}
    if isinstance(dirs, Mapping):
        items = dirs.items()
    else:
        items = [(Path(d).resolve().name, d) if not isinstance(d, tuple) else d for d in dirs]
    return {str(name): Path(path).resolve() for name, path in items}


class ComfyServer:
    """Context manager around `python main.py --cpu --listen 127.0.0.1 --port N ...`.

    custom_node_dirs: pack folders, as {name: path} or a list of paths (named after their folder); the
        name is the module / custom_nodes folder name ComfyUI sees (and /extensions/<name>/).
    models_dir: a folder laid out like ComfyUI's models/ (checkpoints/, loras/, ...); default: the tool
        cache's models/ where the stand-in checkpoint lives.
    output_dir: where SaveImage writes; default: a temporary folder removed on exit.
    threads: OMP/MKL thread count for the server (None: inherit). 1 by default: on a small shared VM torch
        ops on tiny tensors run several times faster single-threaded (measured 1.6 s vs 8.6 s per SD1.5
        UNet call on 2 vCPUs).
    extra_args: more main.py flags. api_nodes: load ComfyUI's API nodes (they need the internet).
    log_path: server log file; default <cache>/logs/comfyui-server-<time>-<port>.log (last 20 kept).
    """

    def __init__(self, comfyui_path: str | os.PathLike | None = None, custom_node_dirs=None, models_dir=None,
                 output_dir=None, port: int | None = None, *, threads: int | None = 1,
                 extra_args: Iterable[str] = (), api_nodes: bool = False, startup_timeout: float = 120.0,
                 log_path: str | os.PathLike | None = None, python: str | None = None, keep_temp: bool = False):
        self.comfyui_path = comfy_env.comfyui_path(comfyui_path)
        self.custom_node_dirs = _as_named_dirs(custom_node_dirs)
        self.models_dir = Path(models_dir).resolve() if models_dir else comfy_env.cache_dir() / "models"
        self._output_dir = Path(output_dir).resolve() if output_dir else None
        self.port = port
        self.threads = threads
        self.extra_args = [str(a) for a in extra_args]
        self.api_nodes = api_nodes
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else None
        self.python = python or sys.executable
        self.keep_temp = keep_temp
        self.client_id = uuid.uuid4().hex
        self.proc: subprocess.Popen | None = None
        self.tmp: Path | None = None
        self.output_dir: Path | None = None
        self.startup_seconds: float | None = None
        self._object_info = None
        self._log_file = None

    # ------------------------------------------------------------------------------------------------
    # lifecycle

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _layout(self) -> Path:
        """Temporary base directory, custom_nodes symlinks and the extra_model_paths.yaml."""
        _remove_stale_temp_dirs()
        tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
        (tmp / "owner.pid").write_text(str(os.getpid()))
        base = tmp / "base"
        for sub in ("custom_nodes", "user", "input", "temp", "models"):
            (base / sub).mkdir(parents=True)
        packs = tmp / "packs"
        packs.mkdir()
        for name, path in self.custom_node_dirs.items():
            if not (path / "__init__.py").is_file():
                raise FileNotFoundError(f"{path} is not a custom node pack (no __init__.py)")
            (packs / name).symlink_to(path, target_is_directory=True)
        self.output_dir = self._output_dir or tmp / "output"
        self.output_dir.mkdir(parents=True, exist_ok=True)
        lines = ["sae_server:", f"    base_path: {json.dumps(str(self.models_dir))}"]
        lines += [f"    {kind}: {kind}" for kind in MODEL_KINDS]
        lines += [f"    custom_nodes: {json.dumps(str(packs))}", ""]
        (tmp / "extra_model_paths.yaml").write_text("\n".join(lines))
        return tmp

    def _command(self) -> list[str]:
        base = self.tmp / "base"
        cmd = [self.python, str(self.comfyui_path / "main.py"), "--cpu", "--listen", HOST, "--port", str(self.port),
               "--base-directory", str(base), "--output-directory", str(self.output_dir),
               "--extra-model-paths-config", str(self.tmp / "extra_model_paths.yaml"),
               "--database-url", f"sqlite:///{base / 'user' / 'comfyui.db'}",
               "--disable-auto-launch", "--preview-method", "none"]
        if not self.api_nodes:
            cmd.append("--disable-api-nodes")
        return cmd + self.extra_args

    def _default_log_path(self) -> Path:
        logs = comfy_env.cache_dir() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        old = sorted(logs.glob("comfyui-server-*.log"), key=lambda p: p.stat().st_mtime)
        for p in old[: max(0, len(old) - (LOGS_KEPT - 1))]:
            p.unlink(missing_ok=True)
        return logs / f"comfyui-server-{time.strftime('%Y%m%d-%H%M%S')}-{self.port}.log"

    def start(self) -> ComfyServer:
        if self.proc is not None:
            return self
        self.port = self.port or free_port()
        self.tmp = self._layout()
        self.log_path = self.log_path or self._default_log_path()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYTHONPATH", None)  # the pack must come in through custom_nodes, not through sys.path
        if self.threads:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env[var] = str(self.threads)
        self._log_file = open(self.log_path, "wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self._command(), cwd=str(self.tmp), env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        try:
            self._wait_ready(t0)
            self._check_packs_loaded()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.perf_counter() - t0
        return self

    def _wait_ready(self, t0: float) -> None:
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.proc.returncode} during startup\n"
                                   f"{self.log_tail()}")
            try:
                self._object_info = self._request("GET", "/object_info", timeout=30)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.perf_counter() - t0 > self.startup_timeout:
                raise TimeoutError(f"ComfyUI did not answer /object_info within {self.startup_timeout:.0f} s\n"
                                   f"{self.log_tail()}")
            time.sleep(0.5)

    def _check_packs_loaded(self) -> None:
        """ComfyUI starts even when a pack fails to import: make that an error here."""
        lines = self.log_text().splitlines()
        for name in self.custom_node_dirs:
            path = str(self.tmp / "packs" / name)
            for line in lines:
                if ("IMPORT FAILED" in line and line.rstrip().endswith(path)) or \
                        line.startswith(f"Cannot import {path} module"):
                    raise RuntimeError(f"custom node pack {name!r} failed to load\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGINT (ComfyUI's clean shutdown), then SIGKILL, to the server's own process group. The leader is
        reaped only after the group got its last signal, so the group id cannot have been reused."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                for sig, wait in ((signal.SIGINT, timeout), (signal.SIGKILL, 10.0)):
                    _killpg(proc.pid, sig)
                    if _exited(proc.pid, wait):
                        break
                _killpg(proc.pid, signal.SIGKILL)  # stragglers in the group, if any
            proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.tmp is not None and not self.keep_temp:
            if self._output_dir is None:
                self.output_dir = None
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    # ------------------------------------------------------------------------------------------------
    # log

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        tail = "\n".join(self.log_text().splitlines()[-lines:])
        return f"--- ComfyUI log ({self.log_path}), last {lines} lines ---\n{tail}"

    # ------------------------------------------------------------------------------------------------
    # HTTP

    def _request(self, method: str, path: str, data=None, timeout: float = 60.0):
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"} if body else {})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def get(self, path: str, timeout: float = 60.0):
        return self._request("GET", path, timeout=timeout)

    def post(self, path: str, data=None, timeout: float = 60.0):
        return self._request("POST", path, data if data is not None else {}, timeout=timeout)

    def get_bytes(self, path: str, timeout: float = 60.0) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            return resp.read()

    def object_info(self, node_class: str | None = None) -> dict:
        """All node definitions (cached: they do not change while the server runs), or one node's."""
        if self._object_info is None:
            self._object_info = self.get("/object_info")
        if node_class is None:
            return self._object_info
        return self._object_info[node_class]

    def queue(self, api_prompt: dict, *, workflow: dict | None = None, extra_data: dict | None = None) -> str:
        """POST /prompt; returns the prompt id. `workflow` (UI format) is embedded like the front end does
        (extra_pnginfo), so saved images carry it. Raises ComfyError with the node errors if invalid."""
        extra = dict(extra_data or {})
        if workflow is not None:
            extra.setdefault("extra_pnginfo", {})["workflow"] = workflow
        payload = {"prompt": api_prompt, "client_id": self.client_id, "extra_data": extra}
        try:
            resp = self.post("/prompt", payload)
        except urllib.error.HTTPError as e:
            body = _read_error_body(e)
            raise ComfyError(f"prompt rejected ({e.code}): {_format_prompt_error(body)}", body) from None
        return resp["prompt_id"]

    def history(self, prompt_id: str | None = None) -> dict:
        return self.get(f"/history/{prompt_id}" if prompt_id else "/history")

    def wait(self, prompt_id: str, timeout: float = 300.0, poll: float = 0.25) -> dict:
        """Poll /history/<id> until the prompt finished; return its history entry. Raises
        ComfyExecutionError (with ComfyUI's exception message) if it failed or was interrupted."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id).get(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                break
            if self.proc is not None and self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI exited with code {self.proc.returncode}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s\n{self.log_tail(20)}")
            time.sleep(poll)
        status = entry.get("status", {})
        if status.get("status_str") != "success":
            raise ComfyExecutionError(_format_execution_error(prompt_id, status), entry)
        return entry

    def run(self, api_prompt: dict, timeout: float = 300.0, **queue_kwargs) -> dict:
        """queue + wait."""
        return self.wait(self.queue(api_prompt, **queue_kwargs), timeout)

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Interrupt the running prompt (only that one if prompt_id is given)."""
        self.post("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def output_files(self, entry: dict, key: str = "images") -> list[Path]:
        """The files a history entry's outputs list under `key`, as paths on disk (type 'output' or 'temp')."""
        paths = []
        for node_out in entry.get("outputs", {}).values():
            for item in node_out.get(key, []):
                root = self.output_dir if item.get("type") == "output" else self.tmp / "base" / "temp"
                paths.append(Path(root, item.get("subfolder", ""), item["filename"]))
        return paths

    def view(self, item: dict) -> bytes:
        """The bytes of one output item ({filename, subfolder, type}) through GET /view."""
        query = urllib.parse.urlencode({k: item.get(k, "") for k in ("filename", "subfolder", "type")})
        return self.get_bytes(f"/view?{query}")


def _read_error_body(e: urllib.error.HTTPError):
    try:
        return json.loads(e.read() or b"null")
    except ValueError:
        return None


def _format_prompt_error(body) -> str:
    if not isinstance(body, dict):
        return str(body)
    err = body.get("error", {})
    parts = [f"{err.get('message', '')} {err.get('details', '')}".strip()]
    for node_id, node_err in (body.get("node_errors") or {}).items():
        for e in node_err.get("errors", []):
            parts.append(f"node {node_id} ({node_err.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "; ".join(p for p in parts if p)


def _format_execution_error(prompt_id: str, status: dict) -> str:
    for event, data in status.get("messages", []):
        if event == "execution_error":
            tb = "".join(data.get("traceback", [])[-6:])
            return (f"prompt {prompt_id} failed in node {data.get('node_id')} ({data.get('node_type')}): "
                    f"{data.get('exception_type')}: {data.get('exception_message')}\n{tb}")
        if event == "execution_interrupted":
            return f"prompt {prompt_id} was interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return f"prompt {prompt_id} ended with status {status.get('status_str')!r}"


def main(argv: list[str] | None = None) -> int:
    """Serve ComfyUI with this pack and the stand-in checkpoint until Ctrl-C (for trying things by hand)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--output-dir", type=Path, default=None)
    parser.add_argument("--no-pack", action="store_true", help="core nodes only")
    args = parser.parse_args(argv)
    from tools.standin_checkpoint import ensure_standin_checkpoint

    repo = Path(__file__).resolve().parent.parent
    models = ensure_standin_checkpoint().parent.parent
    packs = {} if args.no_pack else {"self-attention-edit": repo}
    with ComfyServer(custom_node_dirs=packs, models_dir=models, output_dir=args.output_dir, port=args.port) as srv:
        print(f"{srv.url}  (log: {srv.log_path}, output: {srv.output_dir}); Ctrl-C stops", file=sys.stderr)
        try:
            while srv.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
