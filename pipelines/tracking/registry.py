"""The model registry: a new version per trained model, and the champion alias on the best."""
from __future__ import annotations

from typing import Any

from pipelines.tracking.settings import CHAMPION


def register(uri: str, name: str, model_uri: str, run_id: str, test_nll: float, definition: str = "") -> dict[str, Any]:
    """Register a new version; move the champion alias to it only if its test NLL beats the
    current champion's (lower is better) and was measured the same way: the same `definition`
    (variant, condition, NLL metric, likelihood, binarisation; pipelines.tracking.runs.metric_definition).
    Returns {"version", "champion", "champion_version"}."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    mv = mlflow.register_model(model_uri, name, tags={"test_nll": f"{test_nll:.6f}", "run_id": run_id,
                                                      "metric_definition": definition})
    version = int(mv.version)
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
        current_nll = float(current.tags.get("test_nll", "inf"))
        comparable = current.tags.get("metric_definition", "") == definition
    except MlflowException:
        current, current_nll, comparable = None, float("inf"), True
    # A conditional NLL scores fewer pixels, another likelihood or binarisation another density:
    # such numbers are never compared, so a champion of one definition is never replaced by another.
    promoted = comparable and test_nll < current_nll
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, str(version))
    return {"version": version, "champion": promoted,
            "champion_version": version if promoted else (None if current is None else int(current.version))}


def version_of_run(uri: str, name: str, run_id: str) -> dict[str, Any] | None:
    """The version of `name` registered from `run_id` already, if any (as `register` returns it),
    so a finish repeated after an outage registers no second version."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    versions = [v for v in client.search_model_versions(f"name='{name}'") if v.tags.get("run_id") == run_id]
    if not versions:
        return None
    version = min(int(v.version) for v in versions)
    try:
        champion = int(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        champion = None
    return {"version": version, "champion": champion == version, "champion_version": champion}
