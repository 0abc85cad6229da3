#!/usr/bin/env bash
# Run a committed study one seed at a time, each seed its own study folder (runs/<name>-s<seed>), and commit-ready
# parts: each finished seed's study.json, config.json, report.md and plots go to
# benchmarks/results/<name>/parts/seed-<seed>/, and after each seed all parts so far are merged into
# benchmarks/results/<name>/ (benchmarks/merge_studies.py; STATUS.md says which of the config's seeds are still
# missing). A seed is self-contained (its meta-learners are not needed by another seed), so a study longer than one
# machine's lifetime finishes across machines, seed by seed.
#   bash benchmarks/run_seeds.sh g1 87 100
#   bash benchmarks/run_seeds.sh g1-noise 87 --baseline-from g1   # reuse runs/g1-s87's baseline units (same inputs)
#   bash benchmarks/run_seeds.sh g1-mpnet   # no seeds: merge the parts there are
# Long: run it in the background (nohup ... &); rerunning a seed resumes it.
set -euo pipefail
cd "$(dirname "$0")/.."
name="$1"; shift
seeds=(); baseline_from=""
while (( $# )); do
    case "$1" in
        --baseline-from) baseline_from="$2"; shift 2 ;;
        *) seeds+=("$1"); shift ;;
    esac
done
dest="benchmarks/results/$name"

merge_parts() {  # every finished seed's part into $dest; STATUS.md names the config's seeds still missing
    mapfile -t parts < <(ls -d "$dest"/parts/seed-* | sort -V)  # parts in numeric seed order
    python3 benchmarks/merge_studies.py "$dest" "${parts[@]}" --allow-differ model
    python3 - "$dest" "benchmarks/configs/$name.yaml" <<'PY'
import json
import sys
from pathlib import Path

import yaml

dest, config = Path(sys.argv[1]), yaml.safe_load(Path(sys.argv[2]).read_text())
done = json.loads((dest / "study.json").read_text())["config"]["seeds"]
missing = [s for s in config.get("seeds", []) if s not in done]
status = dest / "STATUS.md"
if missing:
    status.write_text(f"# Interim: {len(done)} of {len(config['seeds'])} seeds\n\nDone: {', '.join(map(str, done))}. "
                      f"Missing: {', '.join(map(str, missing))} (`bash benchmarks/run_seeds.sh {dest.name} "
                      f"{' '.join(map(str, missing))}`).\n")
else:
    status.unlink(missing_ok=True)
print(f"{dest}: seeds {done}" + (f", missing {missing}" if missing else ""))
PY
}

for seed in "${seeds[@]}"; do
    run="runs/$name-s$seed"
    if [[ -n "$baseline_from" && ! -e "$run/seed-$seed/finetune/baseline" ]]; then
        mkdir -p "$run/seed-$seed/finetune"
        cp -r "runs/$baseline_from-s$seed/seed-$seed/finetune/baseline" "$run/seed-$seed/finetune/"
    fi
    metaft run --config "benchmarks/configs/$name.yaml" --seeds "$seed" --out "$run"
    mkdir -p "$dest/parts/seed-$seed"
    cp "$run/study.json" "$run/config.json" "$run/report.md" "$run"/*.png "$dest/parts/seed-$seed/"
    merge_parts  # the merged folder is current after every seed, ready for a commit
done
(( ${#seeds[@]} )) || merge_parts  # no seeds given: merge the parts there are
