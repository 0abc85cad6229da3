#!/usr/bin/env bash
# The GPU checks of a session that is lent a device machine, as one prepared call (under 10 minutes).
#
# Here, once (CPU machine, venv active):   bash benchmarks/gpu_session.sh prepare
#   writes .gpu-carry/ (git-ignored, < 64 MiB): a half-precision copy of the default model with all its other
#   files (metaft loads it back in float32; without the sentence-transformers files head_pooling / head_normalize
#   auto would resolve to another head: prepare checks it) and the g1 corpora, packed. (all-mpnet-base-v2 is 438 MB even in half precision: more than
#   a call can carry, so its study runs on CPU.)
# There, one `run` call with carry [".gpu-carry"] and timeout_s 600:   bash benchmarks/gpu_session.sh run
#   (extra arguments go to every `metaft run`; a CPU smoke test of this path:
#   OUT=/tmp/smoke bash benchmarks/gpu_session.sh run --seeds 42 --ablations no-typicality
#   --meta epochs=0.02 --finetune epochs=0.05 --finetune test_limit=40)
#   (0) a smoke study on the device (2 seeds, every variant, a few steps, packed): if it fails the call stops
#       at once, so the device time left can go to a fixed rerun;
#   (0b) benchmarks/packed_grouped.py --parts minilm on CUDA (60 s cap): the one-run path and banks of 30 with
#       the vmap and the grouped forward, step times on the real model (packed-grouped-cuda.json);
#   (1) the 5-seed g1 study at the defaults (benchmarks/configs/g1.yaml), packed (--pack auto): issue 16's
#       study and issue 17's wall-time target (< 3 minutes, model loading and every evaluation included);
#   (2) the label-noise control (benchmarks/configs/g1-noise.yaml), packed (issue 16);
#   (3) the 20-seed g1 study's other 15 seeds (benchmarks/configs/g1-20seeds.yaml --seeds 1 ... 16), packed,
#       with what is left of 550 s (issue 17); here, merged with (1) into the 20-seed study
#       (benchmarks/merge_studies.py: same settings, disjoint seeds);
#   (4) if 70 s are left: benchmarks/packed.py speed --study-units --device cuda (one unit at a time vs a bank
#       of 32, same process).
#   Each study comes back as one .tgz of its study.json, report.md, config.json, plots and log (at most 8 files
#   come back); copy them into benchmarks/results/ here afterwards (a cut study: `metaft report --complete-seeds`).
set -euo pipefail
cd "$(dirname "$0")/.."
carry=.gpu-carry

case "${1:-}" in
prepare)
    corpora="${METAFT_CORPORA:-../shared/data}"
    mkdir -p "$carry"
    python3 - "$carry/minilm-fp16" <<'PY'
import shutil
import sys
from pathlib import Path

from transformers import AutoModel

from metaft.heads import resolve_normalize, resolve_pooling
from metaft.hub import resolve_model

# every file of the model folder but its weights (the sentence-transformers files decide what head_pooling and
# head_normalize auto resolve to), then the weights in half precision
src, dest = Path(resolve_model("minilm")), Path(sys.argv[1])
shutil.rmtree(dest, ignore_errors=True)
shutil.copytree(src, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.h5", "*.onnx", "*.msgpack",
                                                         "onnx", "openvino", ".git*", "README.md"))
AutoModel.from_pretrained(src).half().save_pretrained(dest)
def auto_head(source: str) -> tuple[str, bool]:
    pooling = resolve_pooling("auto", source)
    return pooling, resolve_normalize("auto", pooling, source)


heads = {name: auto_head(source) for name, source in (("minilm", "minilm"), ("the copy", str(dest)))}
for name, (pooling, normalize) in heads.items():
    print(f"{name}: head_pooling auto -> {pooling}, head_normalize auto -> {normalize}")
if heads["the copy"] != heads["minilm"]:
    sys.exit("the half-precision copy resolves head_pooling / head_normalize auto differently from minilm")
PY
    tar czf "$carry/corpora.tgz" -C "$corpora" SHA256SUMS README.md sst2 mr cr
    du -sh "$carry"
    ;;
run)
    shift
    export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
    export METAFT_CORPORA=/tmp/corpora OUT="${OUT:-/tmp/gpu-out}"
    mkdir -p "$METAFT_CORPORA" "$OUT"
    tar xzf "$carry/corpora.tgz" -C "$METAFT_CORPORA"
    begin=$(date +%s)  # the whole call must end inside the device's 600 s
    left() { echo $(( 550 - ($(date +%s) - begin) )); }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
    model="$PWD/$carry/minilm-fp16"
    python3 -c "import sys; from metaft.config import StudyConfig; from metaft.study import head_note; \
print(head_note(StudyConfig(model=sys.argv[1])))" "$model"
    s0=$(date +%s)
    if ! timeout 120 python3 -m metaft run --config benchmarks/configs/g1.yaml --model "$model" --pack auto \
            --seeds 42 13 --meta epochs=0.05 --finetune epochs=0.1 --finetune test_limit=40 --out /tmp/smoke "$@" \
            > "$OUT/smoke.log" 2>&1; then
        tail -n 60 "$OUT/smoke.log"; echo "SMOKE FAILED after $(( $(date +%s) - s0 )) s: stopping"; exit 1
    fi
    echo "smoke study: $(( $(date +%s) - s0 )) s wall" | tee "$OUT/timings.txt"
    timeout 60 python3 benchmarks/packed_grouped.py --device cuda --parts minilm --model "$model" --bf16 \
        --minilm-runs 30 --minilm-steps 30 --out "$OUT/packed-grouped-cuda.json" > "$OUT/packed-grouped.log" 2>&1 \
        || echo "packed_grouped.py failed or was cut at 60 s (figures so far kept)"
    tail -n 8 "$OUT/packed-grouped.log"
    study() {  # name, seconds: run (or resume) benchmarks/configs/<name>.yaml, packed, and pack its results
        local name="$1" limit="$2"; shift 2
        local s0 dir="/tmp/out-$name/$name"; s0=$(date +%s)
        mkdir -p "$dir"
        timeout "$limit" python3 -m metaft run --config "benchmarks/configs/$name.yaml" --model "$model" \
            --pack auto --out "/tmp/bench-$name" "$@" > "$dir/run.log" 2>&1 \
            || echo "the $name study failed or was cut at its $limit s (finished units kept)" | tee -a "$dir/run.log"
        echo "$name study: $(( $(date +%s) - s0 )) s wall (limit $limit s)" | tee -a "$OUT/timings.txt"
        tail -n 5 "$dir/run.log"
        python3 -m metaft report --complete-seeds "/tmp/bench-$name" > /dev/null 2>&1 || true
        cp /tmp/bench-"$name"/{study.json,report.md,config.json} /tmp/bench-"$name"/*.png "$dir/" 2>/dev/null || true
        tar czf "$OUT/$name.tgz" -C "/tmp/out-$name" "$name"
    }
    study g1 240 "$@"
    study g1-noise "$(( $(left) < 150 ? $(left) : 150 ))" "$@"
    study g1-20seeds "$(left)" --seeds 1 2 3 4 5 6 7 8 9 10 11 12 14 15 16 "$@"
    if (( $(left) >= 70 )); then
        timeout "$(left)" python3 benchmarks/packed.py speed --study-units --device cuda --model "$model" \
            --packs 32 --units 2 --out "$OUT/packed-study-units-cuda.json" || echo "packed.py failed or was cut"
    fi
    echo "whole call: $(( $(date +%s) - begin )) s" | tee -a "$OUT/timings.txt"
    ;;
*)
    echo "usage: bash benchmarks/gpu_session.sh prepare|run" >&2
    exit 2
    ;;
esac
