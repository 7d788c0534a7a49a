"""Old home of the logged model, kept so imports and models logged before the split still load
(a model logged from code imports `pipelines.mlflow_model.LatentEncoder`). See pipelines/tracking/."""
from pipelines.tracking.model_uri import resolve_model_uri  # noqa: F401
from pipelines.tracking.pyfunc import (MODEL_NAME_IN_RUN, NATIVE_ARTIFACT, LatentEncoder,  # noqa: F401
                                       log_model, signature_for)
from pipelines.tracking.registry import register  # noqa: F401
from pipelines.tracking.settings import CHAMPION  # noqa: F401
