"""`vaezoo encode`: batch encoding of an image dataset to Parquet latents on Ray Data.

The pipeline is Ray Data end to end and streams, so memory stays flat as the input grows:

1. read: a Ray Data datasource cuts the input into parts whose row ids are known in advance and
   decodes images in its read tasks into blocks of (id, label, pixels as uint8 C*H*W); a part is
   read block by block, so no task holds more than a few MiB of pixels;
2. encode: `map_batches` on an actor pool; each actor loads the model once (from the bytes of
   its config.json and model.safetensors, shipped with the actor, so it works on any node),
   runs as many torch threads as the CPUs it reserves, and calls the model on `batch_size` rows
   at a time. Ray fuses the read into the actors (same resources, whole blocks): no read worker
   processes, and blocks reach the model without crossing the object store;
3. write: `write_parquet` with an explicit schema into a staging folder beside the output.

Output schema (every file carries it, with JSON provenance under the schema metadata key
`vaezoo`: model URI and registry version, weights hash, variant, latent dimension, data shape,
preprocessing, source, split, row count, creation time, vae-zoo version):

    id        int64 not null   the row's stable index in the source (see "ids" below)
    label     int64            null where the source has no label
    z_mean    fixed_size_list<float32>[D]
    z_logvar  fixed_size_list<float32>[D]

Rows are not in id order (order is not preserved, for throughput): sort by `id` when it matters.

Decisions worth knowing:

* Preprocessing: pixels are fed as grey levels x/255, whatever `data.binarize` the model was
  trained with. That is the mean of the Bernoulli a binarised model was trained on, the usual
  input for embeddings, and it makes a row's latent a function of that row alone (a fixed-seed
  binarisation like the test split's would depend on the row's position in the whole split).
  The metadata records `preprocessing` and the model's `model_binarize`.
* ids: IDX data counts rows from 0 in file order; `--split all` numbers the train rows first and
  the test rows after them (the metadata's `splits` gives each split's id range). Parquet input
  counts rows across the files in the order given, a folder's files sorted by relative path. A
  folder of images counts the image files sorted by relative path; images that sit exactly one
  folder deep (`ROOT/CLASS/x.png`, torchvision's ImageFolder layout) get the index of their
  sorted class folder as label (the names are in the metadata's `source.classes`).
* Labels reach the model only for variants that use them (`Variant.uses_labels`: m2 and a
  label-conditioned cvae): m2 falls back to its classifier for rows without a label; a
  label-conditioned cvae needs every label.
* Images must already have the model's size and channel count: nothing is resized or converted
  between grey and colour. A flat or nested uint8 array is read as (H, W, C) unless its declared
  shape (a Ray tensor column, nested fixed-size lists) says (C, H, W).
* Exactly once: the job writes into `.DIR.staging-HOST-PID-RANDOM` next to DIR, then checks that
  the staged files hold every id exactly once and moves them into place with one rename (with
  `--overwrite`, an atomic exchange with the old DIR where Linux supports it, else two renames).
  A killed job leaves DIR as it was; its staging folder is removed by the next run for the same

The package, by concern: `schema` (output schema, metadata, errors), `sources` (planning the
input into parts), `readers` (decoding a part), `datasource` (Ray Data), `encoder` (the model
call and its actor), `staging` (exactly-once commit), `job` (`run_encode`), `command` (the CLI).
"""
from pipelines.encode.command import add_encode_parser, cmd_encode, main
from pipelines.encode.encoder import LatentEncoder, encode_pixels
from pipelines.encode.job import _connect, _sha256, run_encode  # noqa: F401 - _connect, _sha256: tests reach them
from pipelines.encode.readers import decode_image, read_part
from pipelines.encode.schema import (FORMAT_NAME, FORMAT_VERSION, META_KEY, PREPROCESSING, EncodeError, EncodeFailed,
                                     output_schema, read_latents_metadata)
from pipelines.encode.sources import Part, Source, plan_source
from pipelines.encode.staging import _host, clean_stale_staging, verify_output  # noqa: F401 - _host: tests

__all__ = ["EncodeError", "EncodeFailed", "FORMAT_NAME", "FORMAT_VERSION", "LatentEncoder", "META_KEY", "PREPROCESSING",
           "Part", "Source", "add_encode_parser", "clean_stale_staging", "cmd_encode", "decode_image", "encode_pixels",
           "main", "output_schema", "plan_source", "read_latents_metadata", "read_part", "run_encode", "verify_output"]
