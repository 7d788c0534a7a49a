"""MLflow "models from code" entry: logged by file path, so loading the model imports this module
instead of unpickling an object (nothing a user points at is ever unpickled)."""
import mlflow.models

from pipelines.tracking.pyfunc import LatentEncoder

mlflow.models.set_model(LatentEncoder())
