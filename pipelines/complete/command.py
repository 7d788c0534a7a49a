"""`vaezoo complete`'s arguments and command."""
from __future__ import annotations

import contextlib
import json
import signal
import sys

from pipelines.encode.job import _quiet_ray_data_errors
from pipelines.encode.sources import SPLITS


def add_complete_parser(subparsers):
    p = subparsers.add_parser(
        "complete", help="super-resolution or inpainting of a dataset with a conditional VAE, on Ray Data",
        description="Complete images with a cvae trained with variant.condition=lowres (superres) or mask "
                    "(inpaint): each image of SOURCE is degraded as the model was trained (average-pooled, or "
                    "masked), completed N times from p(z|c), and scored against itself. DIR gets Parquet scores in scores/ "
                    "(id, label, cond_nll, psnr_mean, ssim_mean, psnr_best, ssim_best, consistency, diversity) "
                    "and images/ID.png (input, mean completion, N samples, truth); it appears only when complete.")
    p.add_argument("--model", required=True, help="model folder, or an MLflow URI (models:/NAME@ALIAS, runs:/ID/model)")
    p.add_argument("--input", required=True, nargs="+", metavar="SOURCE", help="what encode reads: a dataset name, "
                   "an IDX folder, Parquet files or folders, or a folder of images")
    p.add_argument("--task", required=True, choices=["superres", "inpaint"], help="must match the model's condition")
    p.add_argument("--samples", type=int, default=8, help="completions drawn per image (default 8)")
    p.add_argument("--nll-samples", type=int, default=1000, help="importance samples of each image's conditional "
                                                                 "NLL (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seeds each row's mask and samples by its id (default 0)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder to create")
    p.add_argument("--split", choices=list(SPLITS), help="as for encode (IDX data: default test)")
    p.add_argument("--data-dir", help="folder with the IDX files of a dataset given by name")
    p.add_argument("--image-column", default="image")
    p.add_argument("--label-column", default="label")
    p.add_argument("--batch-size", type=int, default=64, help="images per model call (default 64)")
    p.add_argument("--num-workers", type=int, default=1, help="actors, each loads the model once (default 1)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per actor")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it holds earlier complete output")
    p.add_argument("--rows-per-file", type=int, default=100_000)
    p.add_argument("--address", help="Ray cluster to join (default $RAY_ADDRESS, else a local cluster)")
    p.add_argument("--no-progress", action="store_true")
    return p


def cmd_complete(args) -> int:
    from pipelines.complete.job import run_complete

    def on_term(signum, frame):  # SIGTERM: unwind, so the staging folder is removed
        raise SystemExit(128 + signum)

    previous = None
    with contextlib.suppress(ValueError):
        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with _quiet_ray_data_errors():
            summary = run_complete(
                args.model, args.input, args.output, task=args.task, samples=args.samples,
                nll_samples=args.nll_samples, seed=args.seed, split=args.split, data_dir=args.data_dir,
                image_column=args.image_column, label_column=args.label_column, batch_size=args.batch_size,
                num_workers=args.num_workers, use_gpu=args.use_gpu, overwrite=args.overwrite,
                rows_per_file=args.rows_per_file, address=args.address,
                progress=not args.no_progress and sys.stderr.isatty())
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0
