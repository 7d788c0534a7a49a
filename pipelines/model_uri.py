"""Old home of resolve_model_uri, kept for imports. See pipelines/tracking/model_uri.py."""
from pipelines.tracking.model_uri import resolve_model_uri  # noqa: F401
