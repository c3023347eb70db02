"""Dynamic micro-batching: requests that arrive together run through the model together.

A request appends itself to the pending list and, if no run is scheduled, schedules one
for the end of the current event-loop iteration (or ``max_wait_ms`` later). So a lone
request runs at once, while requests parsed in the same iteration, or queued while the
model was busy, share one model call of up to ``max_batch`` rows. No queue, no task per
request: one list and one callback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from deployments.server.contract import MatrixBatch
from deployments.server.model_runtime import Prediction


def _rows(columns) -> int:
    if isinstance(columns, MatrixBatch):
        return columns.matrix.shape[0]
    return len(next(iter(columns.values())))


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
        self.pending: list[tuple[dict, asyncio.Future, int]] = []
        self.scheduled = False
        self.busy = False
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        """Run what is still pending, so that no accepted request is left unanswered."""
        while self.pending or self.busy:
            if self.pending and not self.busy:
                self._run()
            await asyncio.sleep(0.001)

    async def submit(self, columns: dict[str, np.ndarray]) -> Prediction:
        loop = self.loop or asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((columns, future, _rows(columns)))
        if not self.scheduled and not self.busy:
            self.scheduled = True
            if self.max_wait_s > 0:
                loop.call_later(self.max_wait_s, self._run)
            else:
                loop.call_soon(self._run)
        return await future

    def _take(self) -> tuple[list, int]:
        items, rows = [], 0
        while self.pending and (not items or rows + self.pending[0][2] <= self.max_batch):
            item = self.pending.pop(0)
            items.append(item)
            rows += item[2]
        return items, rows

    def _run(self) -> None:
        self.scheduled = False
        if self.busy or not self.pending:
            return
        items, rows = self._take()
        merged = self._merge(items)
        if self.run_inline:
            try:
                result = self.predict(merged)
            except Exception as error:  # the model failed: each waiting request gets the error
                self._fail(items, error)
            else:
                self._deliver(items, rows, result)
            self._reschedule()
            return
        self.busy = True
        task = self.loop.run_in_executor(None, self.predict, merged)
        task.add_done_callback(lambda done: self._executor_done(done, items, rows))

    def _executor_done(self, done: asyncio.Future, items: list, rows: int) -> None:
        self.busy = False
        if done.exception() is not None:
            self._fail(items, done.exception())
        else:
            self._deliver(items, rows, done.result())
        self._reschedule()

    def _reschedule(self) -> None:
        if self.pending and not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._run)

    def _merge(self, items: list):
        if len(items) == 1:
            return items[0][0]
        if all(isinstance(cols, MatrixBatch) for cols, _, _ in items):
            return MatrixBatch(items[0][0].names, np.concatenate([cols.matrix for cols, _, _ in items]))
        return {c: np.concatenate([cols[c] for cols, _, _ in items]) for c in self.columns}

    @staticmethod
    def _fail(items: list, error: BaseException) -> None:
        for _, future, _ in items:
            if not future.done():
                future.set_exception(error)

    def _deliver(self, items: list, rows: int, result: Prediction) -> None:
        self.on_batch(rows)
        start = 0
        for _, future, n in items:
            if not future.done():
                future.set_result(Prediction(
                    result.labels[start:start + n],
                    None if result.probabilities is None else result.probabilities[start:start + n],
                    result.classes,
                ))
            start += n
