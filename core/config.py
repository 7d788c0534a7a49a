"""Typed run configuration that round-trips to YAML/JSON and fails early, naming the field.

A config has four sections: `model` (shared architecture), `variant` (the options of the chosen
variant, validated by that variant's own options class), `data` and `train`. Everything a run
needs is here, so a config file plus a seed reproduces it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A bad configuration value; the message names the field."""


class _Section(BaseModel):
    # Unknown keys are typos, not extensions: reject them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    architecture: Literal["mlp", "conv"] = "mlp"
    latent_dim: int = Field(20, ge=1, le=4096)
    hidden_dims: list[int] = Field(default_factory=lambda: [400])
    conv_channels: list[int] = Field(default_factory=lambda: [32, 64])
    activation: Literal["relu", "tanh", "elu", "gelu"] = "relu"
    likelihood: Literal["bernoulli", "gaussian", "gaussian_fixed"] = "bernoulli"
    # Standard deviation of the fixed-variance Gaussian (sigma=1 makes the loss 0.5*MSE + const).
    fixed_sigma: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _positive_sizes(self) -> "ModelConfig":
        for name in ("hidden_dims", "conv_channels"):
            if any(v < 1 for v in getattr(self, name)):
                raise ValueError(f"{name} must hold positive integers")
        if self.architecture == "conv" and not self.conv_channels:
            raise ValueError("conv_channels must not be empty for the conv architecture")
        return self


class DataConfig(_Section):
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    binarize: Literal["dynamic", "static", "none"] = "dynamic"
    # Take only the first N training examples (quick runs, tests); None keeps them all.
    train_limit: int | None = Field(None, ge=1)
    test_limit: int | None = Field(None, ge=1)


class ObjectiveConfig(_Section):
    """What training maximises, chosen independently of the variant (core/objectives.py):
    `elbo` (beta weights the KL, `samples` z draws average the reconstruction) or `iwae`
    (Burda et al.'s k-sample importance-weighted bound)."""
    name: Literal["elbo", "iwae"] = "elbo"
    beta: float = Field(1.0, ge=0, description="elbo: KL weight; 1 is the ELBO")
    samples: int = Field(1, ge=1, le=10_000, description="elbo: z samples per example for the reconstruction term")
    k: int = Field(5, ge=1, le=10_000, description="iwae: importance samples per example")

    @model_validator(mode="after")
    def _fields_of_this_objective(self) -> "ObjectiveConfig":
        # A field of the other objective would be silently ignored: refuse it instead.
        unused = {"elbo": {"k": 5}, "iwae": {"beta": 1.0, "samples": 1}}[self.name]
        for field, default in unused.items():
            if getattr(self, field) != default:
                raise ValueError(f"objective.{field} does not apply to the {self.name} objective")
        return self


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    # Adam's fused kernel (torch's fused=True: one op for all parameters instead of about ten per
    # parameter). The default since issue #20: faster steps, but it rounds differently from
    # torch's default Adam, so runs no longer reproduce those of earlier versions bit for bit;
    # false takes the earlier optimiser (a checkpoint keeps the optimiser it was written with).
    # True is core.optim.FusedAdam: torch's fused step bit for bit, less its per-step Python.
    fused_adam: bool = True
    # Accelerator options (they run on a CPU too, where they rarely pay). autocast "bf16" runs the
    # networks' matmuls in bfloat16 under torch.autocast (densities and sums stay float32);
    # compile wraps the encoder and decoder networks in torch.compile (state_dict keys unchanged,
    # so checkpoints load either way). Both off by default: runs reproduce earlier runs exactly.
    autocast: Literal["off", "bf16"] = "off"
    compile: bool = False
    seed: int = 0
    # Per-epoch evaluation: importance samples and how many test images the NLL uses.
    eval_nll_samples: int = Field(100, ge=1)
    eval_nll_examples: int = Field(1000, ge=1)
    eval_batch_size: int = Field(500, ge=1)
    progress: bool = True


class RunConfig(_Section):
    variant_name: str = Field("vae", alias="variant_name")
    model: ModelConfig = Field(default_factory=ModelConfig)
    variant: dict[str, Any] = Field(default_factory=dict)
    # None: the variant's own default (iwae's is the k=5 bound); variants with objectives of
    # their own (no `objectives` they accept) keep None.
    objective: ObjectiveConfig | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="before")
    @classmethod
    def _fill_objective(cls, raw: Any) -> Any:
        """The variant's default objective where the config names none, and the objective options
        of older configs moved out of the variant section (vae: beta, samples; iwae: k), so their
        run folders, checkpoints and registered models load and train exactly as before."""
        if not isinstance(raw, dict):
            return raw
        from core.registry import get_variant

        try:
            variant_cls = get_variant(raw.get("variant_name", "vae"))
        except KeyError:
            return raw  # the after-validator names the unknown variant
        variant = raw.get("variant") if isinstance(raw.get("variant"), dict) else {}
        moved = {k: v for k, v in variant.items() if k in variant_cls.objective_options_in_variant}
        objective = raw.get("objective")
        if not variant_cls.objectives or not (objective is None or isinstance(objective, dict)):
            return raw
        raw = dict(raw)
        if moved:
            raw["variant"] = {k: v for k, v in variant.items() if k not in moved}
        objective = {**(objective or {}), **moved}
        raw["objective"] = objective if "name" in objective else {**variant_cls.default_objective, **objective}
        return raw

    @model_validator(mode="after")
    def _validate_variant_options(self) -> "RunConfig":
        # The variant's own options class validates its section and fills defaults.
        from core.registry import get_variant

        try:
            cls = get_variant(self.variant_name)
        except KeyError as err:
            raise ValueError(f"variant_name: {err.args[0]}") from None
        try:
            options = cls.Options.model_validate(self.variant)
        except ValidationError as err:
            # Re-root the variant's own errors under "variant." so the message names the field.
            raise ValueError(format_validation_error(err, prefix="variant.", header=False)) from None
        object.__setattr__(self, "variant", options.model_dump(mode="json"))
        if not cls.objectives:
            if self.objective is not None:
                raise ValueError(f"objective: the {self.variant_name} variant trains on losses of its own; "
                                 f"leave the objective section out")
        elif self.objective is None:
            object.__setattr__(self, "objective", ObjectiveConfig.model_validate(cls.default_objective))
        elif self.objective.name not in cls.objectives:
            raise ValueError(f"objective.name: {self.objective.name} does not apply to the {self.variant_name} "
                             f"variant (it trains on: {', '.join(cls.objectives)})")
        return self

    def variant_options(self):
        from core.registry import get_variant

        return get_variant(self.variant_name).Options.model_validate(self.variant)

    # -- round trip ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RunConfig":
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            message = format_validation_error(err)
            # An older config's objective option is checked as the objective's: name it as given.
            given = raw.get("variant") if isinstance(raw, dict) and isinstance(raw.get("variant"), dict) else {}
            for key in given:
                message = message.replace(f"objective.{key}:", f"variant.{key} (now objective.{key}):")
            raise ConfigError(message) from None

    @classmethod
    def from_file(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
        try:
            raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            raise ConfigError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        return cls.from_dict(raw)

    def with_variant(self, name: str) -> "RunConfig":
        """The same run with another variant, which starts from its own options and objective
        defaults (the iwae preset's objective is the IWAE bound, not the vae's ELBO)."""
        if name == self.variant_name:
            return self
        return RunConfig.from_dict(self.to_dict() | {"variant_name": name, "variant": {}, "objective": None})

    def with_overrides(self, overrides: dict[str, Any]) -> "RunConfig":
        """Apply dotted-key overrides such as {"train.epochs": 3, "variant.k": 5}; a new
        `variant_name` first (with_variant), then the rest on top of its defaults."""
        overrides = dict(overrides)
        if "variant_name" in overrides:
            return self.with_variant(overrides.pop("variant_name")).with_overrides(overrides)
        raw = self.to_dict()
        # A new objective name first: the old objective's fields do not carry over to it.
        for key, value in sorted(overrides.items(), key=lambda kv: kv[0] != "objective.name"):
            parts = key.split(".")
            node = raw
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"{key}: unknown config section {part!r}")
                node = node[part]
            if parts[0] not in ("variant", "objective") and len(parts) > 1 and parts[-1] not in node:
                raise ConfigError(f"{key}: unknown field")
            if key == "objective.name" and node.get("name") != value:
                node.clear()
            node[parts[-1]] = value
        return RunConfig.from_dict(raw)


def format_validation_error(err: ValidationError, prefix: str = "", header: bool = True) -> str:
    lines = []
    for e in err.errors():
        if e["type"] == "value_error" and not e["loc"]:
            lines.append(prefix + str(e["ctx"]["error"]))  # already names its field
            continue
        where = prefix + ".".join(str(p) for p in e["loc"])
        got = e.get("input")
        got_text = "" if isinstance(got, (dict, type(None))) else f" (got {got!r})"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {msg}{got_text}")
    return ("invalid config: " if header else "") + "; ".join(lines)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse `key=value` from the command line; the value is read as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed
