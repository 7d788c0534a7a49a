"""The quality protocol: every variant trained on one budget and evaluated as its paper evaluates it.

Each suite sets a variant against the baseline its paper beats, trained on the same data, network
sizes, optimiser and number of epochs (10 by default):

  burda  vae and iwae trained with k = 1, 5, 50 samples; test NLL and active units
         (Burda, Grosse & Salakhutdinov 2016, Table 1)
  dvae   the dvae for each corruption against the vae (k=1), both scored on clean test data
         (Im, Ahn, Memisevic & Bengio 2017)
  dvae-small  where the vae overfits (the first 1,000 training images, 100 epochs): vae, dvae at
         Gaussian noise 0.05/0.1/0.25, iwae (k=5) and DIWAE (dvae on the k=5 bound), clean test NLL
  m2     m2 (eq. 9) test accuracy with N labels against a classifier of the same size trained on
         the N labels alone (Kingma, Rezende, Mohamed & Welling 2014, Table 1)
  m1m2   M2 on the posterior means of the same seed's vae (their M1+M2), against the same classifier
  cvae   conditional NLL of the hidden quadrants given 1, 2 or 3 visible ones, against a
         deterministic network that predicts them (Sohn, Lee & Yan 2015, Table 1)
  zoo    the label-conditioned cvae, so that every variant has a row in the shared table
  dcign  dcign against the vae and the beta-vae (beta = 4) with the same conv networks on dsprites:
         MIG, explained variance per factor, re-renderings (Kulkarni et al. 2015)
  superres, inpaint  the cvae as a conditional generator against a deterministic network and
         bicubic upsampling (`applications`)

Every model gets the same test metrics: ELBO, KL and active units on the whole test split, and
the importance-sampled NLL with `nll_samples` samples on the same first `nll_examples` images for
every model (m2 included: it sums its 10 labels out exactly, 10x the decoder work; the networks
of the applications on those images too).

Every model is trained once per seed (`seeds`, at least 3 for a claim to be judged). Results are
kept per model and seed in OUT/results/<key>-seed<s>.json, written once the model is evaluated, so
an interrupted benchmark continues where it stopped, in this session or a later one, and several
processes can share one OUT (each run is claimed by one of them: its .lock holds the pid). Results
kept under an earlier version's names (`<key>-s<s>`, a seedless `bicubic-*`) are read as theirs.
OUT/quality.json holds the seed means ± standard errors and the findings: each claim of a paper
judged by `claims.judge` (holds / does not hold / not resolved at this budget) with its numbers.
The aae suite keeps a protocol of its own (`aae`, into OUT/aae), over the same seeds.

The package, by concern: `protocol` (budget, suites, jobs), `baselines` (the papers' baselines),
`applications` (superres/inpaint), `jobs` (running, keeping and aggregating results), `claims`,
`figures`, `report` (markdown), `command`.
"""
from pipelines.quality.baselines import (classifier_accuracy, completion_network, hidden_pixels_nll, label_classifier,
                                         train_completion_network, train_label_classifier)
from pipelines.quality.claims import findings, judge
from pipelines.quality.command import budget_from_args, command
from pipelines.quality.figures import write_figures
from pipelines.quality.jobs import run, run_job
from pipelines.quality.protocol import CORRUPTIONS, SUITES, Budget, Job, job_config, plan
from pipelines.quality.report import markdown

__all__ = ["Budget", "CORRUPTIONS", "Job", "SUITES", "budget_from_args", "classifier_accuracy", "command",
           "completion_network", "findings", "hidden_pixels_nll", "judge", "job_config", "label_classifier", "markdown", "plan",
           "run", "run_job", "train_completion_network", "train_label_classifier", "write_figures"]
