#!/usr/bin/env bash
# Run (or resume) a committed study and copy its results (JSON, report, plots; no weights) into
# benchmarks/results/<name>/. Usage: bash benchmarks/run_study.sh g1|amazon [extra metaft run flags]
# Long: run it in the background (nohup bash benchmarks/run_study.sh g1 > g1.log 2>&1 &); rerunning resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
name="$1"; shift
run="runs/bench-$name"
start=$(date +%s)
metaft run --config "benchmarks/configs/$name.yaml" --out "$run" "$@"
dest="benchmarks/results/$name"
mkdir -p "$dest"
cp "$run/study.json" "$run/report.md" "$run/config.json" "$dest/"
cp "$run"/*.png "$dest/" 2>/dev/null || true
rm -f "$dest/STATUS.md"  # the study finished: no longer a snapshot
echo "wall time of this invocation: $(( $(date +%s) - start )) s (finished units are skipped on reruns)" > "$dest/last_invocation.txt"
echo "results in $dest"
