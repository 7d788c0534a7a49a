"""Built-in variants. Each module registers one variant; see core/variant.py for the contract."""
from variants import aae, cvae, dcign, dvae, iwae, m2, vae  # noqa: F401
