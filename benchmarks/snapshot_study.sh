#!/usr/bin/env bash
# Copy what a running or interrupted study has finished so far into benchmarks/results/<name>/ (report and
# plots rebuilt from the seeds whose every unit has finished, study.json with every finished unit, config) with a STATUS.md saying how far it got. Usage: bash benchmarks/snapshot_study.sh g1
set -euo pipefail
cd "$(dirname "$0")/.."
name="$1"
run="runs/bench-$name"
dest="benchmarks/results/$name"
metaft -q report --complete-seeds "$run" > /dev/null
mkdir -p "$dest"
cp "$run/study.json" "$run/report.md" "$run/config.json" "$dest/"
cp "$run"/*.png "$dest/" 2>/dev/null || true
python - "$run" "$dest" <<'PY'
import json, sys, datetime
from metaft.report import complete_seeds
run, dest = sys.argv[1:]
study = json.load(open(f"{run}/study.json"))
cfg = study["config"]
variants = 1 + 1 + len(cfg["ablations"])  # baseline, mft, ablations
planned = len(cfg["seeds"]) * len(cfg["domains"]) * variants
done_seeds = complete_seeds(study)
with open(f"{dest}/STATUS.md", "w") as fh:
    fh.write(f"# {cfg['group']} study: snapshot of a study still in progress\n\n"
             f"Taken {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: {len(study['units'])} of "
             f"{planned} fine-tuning units and {len(study['meta'])} of "
             f"{len(cfg['seeds']) * (variants - 1)} meta stages finished; complete seeds: {done_seeds}.\n"
             "The report and plots cover the complete seeds only (study.json holds every finished unit); rerun "
             f"`bash benchmarks/run_study.sh {cfg['group']}` to continue (finished units are reused).\n")
PY
echo "snapshot in $dest"
