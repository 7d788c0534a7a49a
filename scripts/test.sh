#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite. Extra arguments go to one pytest run.
#
# Files that start Ray run in a pytest process each: Ray Train V2 cannot start a new
# TrainController in a process that has already run (and shut down) another Ray session, such as
# test_encode.py's Ray Data cluster. Everything else runs together.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PYTEST=(.venv/bin/python -m pytest -q -p no:cacheprovider)
if [ "$#" -gt 0 ]; then
  exec "${PYTEST[@]}" "$@"
fi
OWN_PROCESS=(tests/test_encode.py tests/test_mlflow.py tests/test_ray_train.py tests/test_ray_jobs.py tests/test_reliability.py tests/test_reference_outputs_ray.py tests/test_complete.py)
ignore=()
for f in "${OWN_PROCESS[@]}"; do ignore+=(--ignore "$f"); done
status=0
"${PYTEST[@]}" tests "${ignore[@]}" || status=1
for f in "${OWN_PROCESS[@]}"; do
  "${PYTEST[@]}" "$f" || status=1
done
if [ "$status" -ne 0 ]; then
  echo "scripts/test.sh: some tests failed (see above)" >&2
fi
exit "$status"
