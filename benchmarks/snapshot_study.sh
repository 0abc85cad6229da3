#!/usr/bin/env bash
# Copy what a running or interrupted study has finished so far into benchmarks/results/<name>/: study.json with
# every finished unit, config, a STATUS.md saying how far it got, and the report and plots rebuilt from the seeds
# whose every unit has finished (none while no seed is complete). Usage: bash benchmarks/snapshot_study.sh g1
set -euo pipefail
cd "$(dirname "$0")/.."
name="$1"
run="runs/bench-$name"
dest="benchmarks/results/$name"
if [ ! -f "$run/study.json" ]; then
  echo "$run/study.json: no finished unit yet, nothing to snapshot" >&2
  exit 1
fi
mkdir -p "$dest"
rm -f "$dest/report.md" "$dest"/*.png
if metaft -q report --complete-seeds "$run" > /dev/null 2>&1; then
  cp "$run/report.md" "$dest/"
  cp "$run"/*.png "$dest/" 2>/dev/null || true
fi
cp "$run/study.json" "$run/config.json" "$dest/"
python - "$run" "$dest" <<'PY'
import sys, datetime
from metaft.report import complete_seeds
from metaft.results import read_study
run, dest = sys.argv[1:]
study = read_study(f"{run}/study.json")
cfg = study.config
variants = 1 + 1 + len(cfg["ablations"])  # baseline, mft, ablations
planned = len(cfg["seeds"]) * len(cfg["domains"]) * variants
done_seeds = complete_seeds(study)
finished = ", ".join(f"{u.variant}/{u.domain} (seed {u.seed})" for u in study.units) or "none"
with open(f"{dest}/STATUS.md", "w") as fh:
    fh.write(f"# {cfg['group']} study: snapshot of a study still in progress\n\n"
             f"Taken {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: {len(study.units)} of "
             f"{planned} fine-tuning units and {len(study.meta)} of "
             f"{len(cfg['seeds']) * (variants - 1)} meta stages finished; complete seeds: {done_seeds or 'none'}.\n"
             f"Finished fine-tuning units: {finished}.\n"
             + ("The report and plots cover the complete seeds only (study.json holds every finished unit)"
                if done_seeds else "No seed is complete yet, so there is no report (study.json holds the finished "
                                   "units)")
             + f"; rerun `bash benchmarks/run_study.sh {cfg['group']}` to continue (finished units are reused).\n")
PY
echo "snapshot in $dest"
