"""The Ray Data datasource: one read task per planned part, decoding up to READ_AHEAD_BLOCKS blocks ahead."""
from __future__ import annotations

import queue
import threading
from typing import Iterator

import numpy as np

from pipelines.encode.readers import read_part
from pipelines.encode.sources import Source

READ_AHEAD_BLOCKS = 2  # decoded blocks waiting for the model, per read task


def read_ahead(blocks: Iterator, depth: int = READ_AHEAD_BLOCKS) -> Iterator:
    """`blocks`, produced by a thread at most `depth` items ahead of the consumer.

    The read runs fused in the encoder actor: without this, decompressing or decoding the next
    block waits for the model call on this one. zlib, Pillow, Arrow and torch all release the GIL,
    so the two overlap on separate cores. An error in the thread is raised here, in order; a
    consumer that stops early stops the thread.
    """
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def offer(item) -> bool:
        """Hand `item` to the consumer; False once the consumer has stopped."""
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for block in blocks:
                if not offer((block, None)):
                    return
            item = (done, None)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            item = (done, err)
        offer(item)

    thread = threading.Thread(target=produce, name="vaezoo-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            block, err = handoff.get()
            if block is done:
                if err is not None:
                    raise err
                return
            yield block
    finally:
        stop.set()
        thread.join()
        close = getattr(blocks, "close", None)
        if close is not None:
            close()


def _make_datasource(source: Source, shape):
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    row_bytes = int(np.prod(shape)) + 16

    class LatentInputDatasource(Datasource):
        def get_name(self) -> str:
            return f"VaezooInput[{source.kind}]"

        def estimate_inmemory_data_size(self) -> int:
            return source.num_rows * row_bytes

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            # Parts are cut at planning time (their ids depend on it), so `parallelism` is a hint
            # this source does not need.
            tasks = []
            for part in source.parts:
                meta = BlockMetadata(num_rows=part.rows, size_bytes=part.rows * row_bytes, exec_stats=None,
                                     input_files=[part.path] if part.path else None)
                tasks.append(ReadTask(lambda part=part: read_ahead(read_part(part, shape, source.image_column,
                                                                             source.label_column)), meta))
            return tasks

    return LatentInputDatasource()
