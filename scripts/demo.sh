#!/usr/bin/env bash
# The embedded default: train a tiny DiffIR x4 (stage one, then stage two) on the bundled photos,
# test it on the held-out photos, compare with bicubic and restore them. CPU, a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
# the demo network is tiny: one thread per op is fastest and avoids oversubscribing small machines
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python3 train.py -opt options/demo/train_demo_DiffIRS1_x4.yml
python3 train.py -opt options/demo/train_demo_DiffIRS2_x4.yml
python3 test.py -opt options/demo/test_demo_DiffIRS2_x4.yml
python3 scripts/demo_report.py
echo "logs and checkpoints: experiments/demo_DiffIRS1_x4, experiments/demo_DiffIRS2_x4; test results: results/demo_DiffIRS2_x4"
