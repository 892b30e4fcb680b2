"""The websocket messages a real ComfyUI server sends to one client ("executing", "progress", ...), read
in a background thread with aiohttp (which ComfyUI itself depends on), so a test can act at a precise
point of a running prompt: e.g. interrupt it when a given node reports progress."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time


class ServerEvents:
    """Context manager: connects to ws://<server>/ws?clientId=<server.client_id> and queues every JSON
    message as (type, data)."""

    def __init__(self, server):
        self.url = f"ws://127.0.0.1:{server.port}/ws?clientId={server.client_id}"
        self.messages: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._listen()), daemon=True)
        self.error: BaseException | None = None

    async def _listen(self):
        import aiohttp

        try:
            async with aiohttp.ClientSession() as session, session.ws_connect(self.url, heartbeat=20) as ws:
                self._connected.set()
                while not self._stop.is_set():
                    try:
                        msg = await ws.receive(timeout=0.2)
                    except asyncio.TimeoutError:
                        continue
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        data = json.loads(msg.data)
                        self.messages.put((data.get("type"), data.get("data", {})))
                    elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        break
        except BaseException as e:  # noqa: BLE001 - reported to the test through .error
            self.error = e
            self._connected.set()

    def __enter__(self) -> ServerEvents:
        self._thread.start()
        if not self._connected.wait(30) or self.error is not None:
            raise RuntimeError(f"could not connect to {self.url}: {self.error}")
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)

    def drain(self) -> None:
        while not self.messages.empty():
            self.messages.get_nowait()

    def wait_for(self, predicate, timeout: float = 120.0):
        """The first message (type, data) satisfying predicate; TimeoutError if none comes in time."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching websocket message")
            try:
                kind, data = self.messages.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if predicate(kind, data):
                return kind, data
