#!/usr/bin/env bash
# The real-data benchmark of issue 17: s5ssm with its defaults against aeon's MiniRocket
# on UEA/UCR sets, in one run. Downloads the aeon wheel (it ships the sets) into a cache,
# makes a separate venv there for aeon (aeon pins its own numba), then per set fits
# MiniRocketClassifier / MiniRocketRegressor(random_state=0) and runs
# `s5ssm train --data NAME_TRAIN.ts --test-data NAME_TEST.ts --quiet --seed S` per seed.
# Prints a markdown table (metric, s5ssm mean and per seed, MiniRocket, wall times,
# s5ssm parameters, the 6-set classification mean) and writes JSON.
#
#   benchmarks/ucr.sh                     the panel (ACSF1 ArrowHead BasicMotions GunPoint
#                                         ItalyPowerDemand OSULeaf Covid3Month) and the
#                                         unequal-length PickupGestureWiimoteZ, JapaneseVowels;
#                                         seeds 0 1 2
#   benchmarks/ucr.sh --quick             ItalyPowerDemand BasicMotions Covid3Month, seed 0
#   benchmarks/ucr.sh --sets GunPoint OSULeaf --seeds 0 1
#   benchmarks/ucr.sh --no-minirocket     s5ssm only (no aeon venv)
#   benchmarks/ucr.sh --out FILE.json     default: benchmarks/results/ucr-DATE.json
#   benchmarks/ucr.sh -- --epochs 30      arguments after -- go to every `s5ssm train`
#   benchmarks/ucr.sh --s5ssm "CMD"       the s5ssm command (default: ./run.sh s5ssm,
#                                         else the s5ssm on PATH)
# Environment: UCR_CACHE (default ~/.cache/s5ssm-ucr) holds the wheel, the extracted .ts
# files (data/NAME/), the aeon venv (aeon-venv/) and the s5ssm runs with their logs
# (runs/TIMESTAMP/NAME-seedS and .log); what is already there is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 benchmarks/ucr.py "$@"
