"""The Ray Data datasource: one read task per planned part."""
from __future__ import annotations

import numpy as np

from pipelines.encode.readers import read_part
from pipelines.encode.sources import Source


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
                tasks.append(ReadTask(lambda part=part: read_part(part, shape, source.image_column,
                                                                  source.label_column), meta))
            return tasks

    return LatentInputDatasource()
