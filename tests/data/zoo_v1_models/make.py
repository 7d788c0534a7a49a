"""Run with the code of commit fd1ef8a (before Zoo v2): tiny models and checkpoints in the old format."""
import json, sys, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, for conftest
from conftest import make_dataset
from core.config import RunConfig
from core.data import PreparedData, prepare_split
from core.training import train, save_checkpoint
from core.serialization import save_model
from core.evaluation import evaluate
torch.set_num_threads(1)
out = Path(sys.argv[1])
train_set, test_set = make_dataset(256, 0), make_dataset(64, 1)
data = PreparedData(train_set, prepare_split(test_set, "dynamic", "test"), dynamic_train=True)
for name, options in {"vae": {"beta": 0.5, "samples": 2}, "iwae": {"k": 3}, "m2": {"num_labels": 40, "labelled_batch_size": 16}}.items():
    raw = {"variant_name": name, "variant": options,
           "model": {"latent_dim": 2, "hidden_dims": [16]}, "data": {"dataset": "synthetic"},
           "train": {"epochs": 2, "batch_size": 32, "seed": 0, "eval_nll_samples": 5, "eval_nll_examples": 16, "progress": False}}
    cfg = RunConfig.from_dict(raw)
    folder = out / name
    (folder / "checkpoints").mkdir(parents=True)
    ckpts = []
    variant = train(cfg, report=lambda m, c: ckpts.append(c), data=data)
    save_checkpoint(ckpts[0], folder / "checkpoints" / "epoch1.pt")
    save_model(variant, cfg, folder)
    torch.manual_seed(0)
    metrics = evaluate(variant, data.test, nll_samples=0)
    (folder / "expected.json").write_text(json.dumps({"test_metrics": metrics, "epoch2_train_metrics": {k: v for k, v in ckpts[1]["metrics"].items() if "sec" not in k}}, indent=1, sort_keys=True))
    print(name, json.loads((folder / "config.json").read_text())["config"]["variant"])
