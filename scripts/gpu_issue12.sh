#!/usr/bin/env bash
# scripts/gpu_check.sh under the name the project's brief gives it: the same phases, knobs and results
# (RESULTS defaults to $OUT, else out/gpu_check). train/BENCH.md says how to run it through the device tool.
exec bash "$(dirname "$0")/gpu_check.sh" "$@"
