"""Dynamic micro-batching: requests that arrive while the model is busy run together.

With ``max_wait_ms`` 0 a lone request runs at once (no added latency); under load the
requests queued during one model call form the next batch, up to ``max_batch`` rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from deployments.server.model_runtime import Prediction


class MicroBatcher:
    def __init__(
        self,
        predict: Callable[[dict[str, np.ndarray]], Prediction],
        columns: list[str],
        max_batch: int,
        max_wait_ms: float,
        run_inline: bool,
        on_batch: Callable[[int], None] = lambda rows: None,
    ) -> None:
        self.predict, self.columns = predict, columns
        self.max_batch, self.max_wait_s = max_batch, max_wait_ms / 1000
        self.run_inline = run_inline
        self.on_batch = on_batch
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    async def submit(self, columns: dict[str, np.ndarray]) -> Prediction:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((columns, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            items = [first]
            rows = len(next(iter(first[0].values())))
            deadline = loop.time() + self.max_wait_s
            while rows < self.max_batch:
                if not self.queue.empty():
                    item = self.queue.get_nowait()
                elif self.max_wait_s > 0 and loop.time() < deadline:
                    try:
                        item = await asyncio.wait_for(self.queue.get(), deadline - loop.time())
                    except TimeoutError:
                        break
                else:
                    break
                items.append(item)
                rows += len(next(iter(item[0].values())))
            await self._run_batch(items, rows, loop)

    async def _run_batch(self, items: list, rows: int, loop: asyncio.AbstractEventLoop) -> None:
        if len(items) == 1:
            merged = items[0][0]
        else:
            merged = {c: np.concatenate([cols[c] for cols, _ in items]) for c in self.columns}
        try:
            if self.run_inline:
                result = self.predict(merged)
            else:
                result = await loop.run_in_executor(None, self.predict, merged)
        except Exception as error:  # the model failed: each waiting request gets the error
            for _, future in items:
                if not future.done():
                    future.set_exception(error)
            return
        self.on_batch(rows)
        start = 0
        for cols, future in items:
            n = len(next(iter(cols.values())))
            part = Prediction(result.labels[start:start + n],
                              None if result.probabilities is None else result.probabilities[start:start + n],
                              result.classes)
            start += n
            if not future.done():
                future.set_result(part)
