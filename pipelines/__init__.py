"""The layer that composes core and variants into commands (train, encode, quality, MLflow).

Importing it tells the variant registry where the built-in variants are for a source tree that was
never installed (installed ones come through entry points); nothing is imported until a variant is
looked up, so `vaezoo --help` stays fast.
"""
import importlib

from core.registry import add_fallback_loader


def _import_builtin_variants() -> None:
    importlib.import_module("variants")


add_fallback_loader(_import_builtin_variants)
