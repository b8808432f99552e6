"""The one inference engine: tasks over items, batched, worker-decoded, backend chosen by name.

>>> from vitrina.engine import Engine, Logits, Embedding, Region
>>> engine = Engine(model, backend="auto")  # doctest: +SKIP
>>> [r.value.top for r in engine.run(Logits(top_k=3), ["a.jpg", photo_array])]  # doctest: +SKIP
>>> engine.run(Embedding(), [Region("shelf.jpg", (10, 20, 110, 220))])  # doctest: +SKIP
"""

import vitrina.engine.auto
import vitrina.engine.dlib
import vitrina.engine.fp64
import vitrina.engine.geometry
import vitrina.engine.int8
import vitrina.engine.onnx
import vitrina.engine.openvino
import vitrina.engine.variants  # noqa: F401  (register backends, box checks)
from vitrina.engine.backends import (
    BACKENDS,
    OUTPUT_CHECKS,
    TOLERANCES,
    Backend,
    Tolerance,
    bf16_supported,
    compare_outputs,
    model_output,
    resolve_backend,
)
from vitrina.engine.engine import (
    Engine,
    EngineBatch,
    PreparedBatch,
    TaskBatch,
    TaskResult,
    available_cores,
    batch_inputs,
    default_workers,
    resolve_device,
    torch_threads,
)
from vitrina.engine.geometry import BOXES, Letterbox, Placement, box_iou, compare_boxes
from vitrina.engine.items import Item, Region, as_items, item_name, load_item, thumbnail
from vitrina.engine.tasks import (
    TASKS,
    Embedding,
    ImagePreparer,
    Logits,
    Prepared,
    Scores,
    Task,
    rows_per_item,
    short_side,
)

__all__ = [
    "BACKENDS",
    "BOXES",
    "OUTPUT_CHECKS",
    "TASKS",
    "TOLERANCES",
    "Backend",
    "Embedding",
    "Engine",
    "EngineBatch",
    "ImagePreparer",
    "Item",
    "Letterbox",
    "Logits",
    "Placement",
    "Prepared",
    "PreparedBatch",
    "Region",
    "Scores",
    "Task",
    "TaskBatch",
    "TaskResult",
    "Tolerance",
    "as_items",
    "available_cores",
    "batch_inputs",
    "bf16_supported",
    "box_iou",
    "compare_boxes",
    "compare_outputs",
    "default_workers",
    "item_name",
    "load_item",
    "model_output",
    "resolve_backend",
    "resolve_device",
    "rows_per_item",
    "short_side",
    "thumbnail",
    "torch_threads",
]
