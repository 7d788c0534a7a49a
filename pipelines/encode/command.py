"""`vaezoo encode`'s arguments and command (and `python -m pipelines.encode`)."""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys

from pipelines.encode.job import _quiet_ray_data_errors, run_encode
from pipelines.encode.sources import SPLITS
from pipelines.errors import run_command


def add_encode_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "encode", help="encode a dataset to Parquet latents on Ray Data",
        description="Encode images to latent means and log-variances with a saved model: Ray Data reads "
                    "SOURCE, an actor pool encodes batches, Parquet files land in DIR (columns id, label, "
                    "z_mean, z_logvar; provenance in the schema metadata under 'vaezoo'). DIR appears only "
                    "when complete. Pixels are fed as grey levels x/255.")
    p.add_argument("--model", required=True, help="model folder, or an MLflow URI: models:/NAME@ALIAS, "
                                                   "models:/NAME/VERSION, runs:/RUN_ID/model")
    p.add_argument("--input", required=True, nargs="+", metavar="SOURCE",
                   help="a dataset name (fashion-mnist; see --data-dir), a folder of MNIST-layout IDX files, "
                        "Parquet files or folders of them with an image column, or a folder of image files")
    p.add_argument("--output", required=True, metavar="DIR", help="folder of Parquet files to create")
    p.add_argument("--split", choices=list(SPLITS),
                   help="IDX data: train, test (default) or all (train ids first); Parquet folders: files "
                        "named SPLIT-* or under a SPLIT folder (default every file); image folders: ROOT/SPLIT")
    p.add_argument("--data-dir", help="folder with the IDX files of a dataset given by name")
    p.add_argument("--image-column", default="image", help="Parquet column with the images (default image)")
    p.add_argument("--label-column", default="label", help="Parquet column with integer labels, if any (default label)")
    p.add_argument("--batch-size", type=int, default=1024, help="images per model call (default 1024)")
    p.add_argument("--num-workers", type=int, default=1, help="encoder actors, each loads the model once (default 1)")
    p.add_argument("--cpus-per-worker", type=float, default=None,
                   help="CPUs reserved per encoder actor, each a torch thread (default: on a local cluster the "
                        "machine's CPUs split over the actors; on a cluster joined with --address, 1)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per encoder actor")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it holds earlier encode output")
    p.add_argument("--rows-per-file", type=int, default=100_000,
                   help="rows per Parquet file (default 100000; a few files may hold fewer)")
    p.add_argument("--address", help="Ray cluster to join (default $RAY_ADDRESS, else a local cluster for this "
                                     "job); DIR must be on storage every node shares")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def cmd_encode(args) -> int:
    def on_term(signum, frame):  # SIGTERM: unwind, so the staging folder is removed
        raise SystemExit(128 + signum)

    previous = None
    with contextlib.suppress(ValueError):  # not in the main thread
        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with _quiet_ray_data_errors():
            summary = run_encode(
                args.model, args.input, args.output, split=args.split, data_dir=args.data_dir,
                image_column=args.image_column, label_column=args.label_column, batch_size=args.batch_size,
                num_workers=args.num_workers, cpus_per_worker=args.cpus_per_worker, use_gpu=args.use_gpu, overwrite=args.overwrite,
                rows_per_file=args.rows_per_file, address=args.address,
                progress=not args.no_progress and sys.stderr.isatty())
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m pipelines.encode ...`: the same as `vaezoo encode ...`."""
    parser = argparse.ArgumentParser(prog="vaezoo")
    add_encode_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["encode", *(sys.argv[1:] if argv is None else argv)])
    return run_command("encode", cmd_encode, args)
