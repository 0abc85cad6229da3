#!/usr/bin/env bash
# The GPU checks of a session that is lent a device machine, as one prepared call (under 10 minutes).
#
# Here, once (CPU machine, venv active):   bash benchmarks/gpu_session.sh prepare
#   writes .gpu-carry/ (git-ignored, < 64 MiB): a half-precision copy of the default model with all its other
#   files (metaft loads it back in float32; without the sentence-transformers files head_pooling / head_normalize
#   auto would resolve to another head: prepare checks it) and all the corpora, packed (all of them:
#   the k-shot pools are cleared of every present corpus's test texts, so fewer corpora give other splits).
# There, one `run` call with carry [".gpu-carry"] and timeout_s 600:   bash benchmarks/gpu_session.sh run
#   (extra arguments go to every `metaft run`; a CPU smoke test of this path:
#   SMOKE_S=300 OUT=/tmp/smoke bash benchmarks/gpu_session.sh run --seeds 42 --ablations no-typicality
#   --meta epochs=0.02 --finetune epochs=0.05 --finetune test_limit=40)
#   (0) a smoke study on the device (2 seeds, every variant, a few steps, packed): if it fails the call stops
#       at once, so the device time left can go to a fixed rerun;
#   (0b) benchmarks/packed_grouped.py --parts minilm on CUDA (60 s cap): the one-run path and banks of 30 with
#       the vmap and the grouped forward, step times on the real model (packed-grouped-cuda.json);
#   (1) the 5-seed g1 study at the defaults (benchmarks/configs/g1.yaml), packed (--pack auto): issue 17's
#       wall-time target (< 3 minutes, model loading and every evaluation included), and a GPU cross-check of
#       the CPU study in benchmarks/results/g1/ (same splits; statistically, not digit for digit, the same);
#   (2) the 20-seed g1 study's other 15 seeds (benchmarks/configs/g1-20seeds.yaml --seeds 1 ... 16), packed,
#       with what is left of 550 s (issue 17); here, merged with the CPU g1 study's parts into the 20-seed study
#       (benchmarks/merge_studies.py: same settings, disjoint seeds, splits drawn alike; --allow-differ model);
#   (3) if 70 s are left: benchmarks/packed.py speed --study-units --device cuda (one unit at a time vs a bank
#       of 32, same process).
#   Each study comes back as one .tgz of its study.json, report.md, config.json, plots and log (at most 8 files
#   come back); copy them into benchmarks/results/ here afterwards (a cut study: `metaft report --complete-seeds`).
#
# The mpnet study (issue 18): all-mpnet-base-v2 is ~220 MB in half precision, more than one call carries (64 MiB),
# so it travels in 4 parts over 4 back-to-back calls on the same warm machine (carried ignored paths of earlier
# calls stay there while it is warm; each call must come within the 30 s warm window of the last):
#   here, once:  bash benchmarks/gpu_session.sh prepare-mpnet      (writes .gpu-mpnet-1/ ... .gpu-mpnet-4/)
#   there:       calls 1-3 `bash benchmarks/gpu_session.sh mpnet-part` with carry [".gpu-mpnet-N"] (N = 1, 2, 3;
#                each lists the parts present: stop if an earlier one is gone), then call 4
#                `bash benchmarks/gpu_session.sh mpnet` with carry [".gpu-mpnet-4"], timeout_s 600: checks the
#                assembled tar's SHA-256, a smoke study, then benchmarks/configs/g1-mpnet.yaml packed with the rest
#                of 550 s (g1-mpnet.tgz back; a cut study resumes in the next warm call: /tmp stays).
set -euo pipefail
cd "$(dirname "$0")/.."
carry=.gpu-carry

half_copy() {  # alias, folder: every file of the model folder but its weights, then the weights in half precision
    python3 - "$1" "$2" <<'PY'
import shutil
import sys
from pathlib import Path

from transformers import AutoModel

from metaft.heads import resolve_normalize, resolve_pooling
from metaft.hub import resolve_model

# the sentence-transformers files decide what head_pooling and head_normalize auto resolve to: copy them all
alias, dest = sys.argv[1], Path(sys.argv[2])
src = Path(resolve_model(alias))
shutil.rmtree(dest, ignore_errors=True)
shutil.copytree(src, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.h5", "*.onnx", "*.msgpack",
                                                         "onnx", "openvino", ".git*", "README.md", "desktop.ini"))
AutoModel.from_pretrained(src).half().save_pretrained(dest)


def auto_head(source: str) -> tuple[str, bool]:
    pooling = resolve_pooling("auto", source)
    return pooling, resolve_normalize("auto", pooling, source)


heads = {name: auto_head(source) for name, source in ((alias, alias), ("the copy", str(dest)))}
for name, (pooling, normalize) in heads.items():
    print(f"{name}: head_pooling auto -> {pooling}, head_normalize auto -> {normalize}")
if heads["the copy"] != heads[alias]:
    sys.exit(f"the half-precision copy resolves head_pooling / head_normalize auto differently from {alias}")
PY
}

setup() {  # on the device: environment, output folder, the call's clock
    export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
    export METAFT_CORPORA=/tmp/corpora OUT="${OUT:-/tmp/gpu-out}"
    mkdir -p "$METAFT_CORPORA" "$OUT"
    begin=$(date +%s)  # the whole call must end inside the device's 600 s
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
}

left() { echo $(( 550 - ($(date +%s) - begin) )); }

smoke() {  # config name: a tiny packed study of every variant on $model; stops the call if it fails
    local name="$1" s0; shift; s0=$(date +%s)
    python3 -c "import sys; from metaft.config import StudyConfig; from metaft.study import head_note; \
print(head_note(StudyConfig(model=sys.argv[1])))" "$model"
    if ! timeout "${SMOKE_S:-120}" python3 -m metaft run --config "benchmarks/configs/$name.yaml" --model "$model" \
            --pack auto --seeds 42 13 --meta epochs=0.05 --finetune epochs=0.1 --finetune test_limit=40 --out /tmp/smoke "$@" \
            > "$OUT/smoke.log" 2>&1; then
        tail -n 60 "$OUT/smoke.log"; echo "SMOKE FAILED after $(( $(date +%s) - s0 )) s: stopping"; exit 1
    fi
    echo "smoke study: $(( $(date +%s) - s0 )) s wall" | tee "$OUT/timings.txt"
}

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

case "${1:-}" in
prepare)
    corpora="${METAFT_CORPORA:-../shared/data}"
    mkdir -p "$carry"
    half_copy minilm "$carry/minilm-fp16"
    tar czf "$carry/corpora.tgz" -C "$corpora" .  # all: a pool is cleared of every present corpus's test texts
    du -sh "$carry"
    ;;
prepare-mpnet)
    # all-mpnet-base-v2 in half precision (~220 MB) as one tar split into 4 parts of < 60 MiB, one per call:
    # .gpu-mpnet-1/ (with the corpora and the tar's SHA-256) ... .gpu-mpnet-4/
    corpora="${METAFT_CORPORA:-../shared/data}"
    tmp=$(mktemp -d)
    half_copy mpnet "$tmp/mpnet-fp16"
    tar cf "$tmp/mpnet.tar" -C "$tmp" mpnet-fp16
    rm -rf .gpu-mpnet-?; mkdir -p .gpu-mpnet-1 .gpu-mpnet-2 .gpu-mpnet-3 .gpu-mpnet-4
    split -n 4 -d -a 1 "$tmp/mpnet.tar" "$tmp/part-"
    for i in 1 2 3 4; do mv "$tmp/part-$(( i - 1 ))" ".gpu-mpnet-$i/part"; done
    (cd "$tmp" && sha256sum mpnet.tar) > .gpu-mpnet-1/SHA256SUMS
    tar czf .gpu-mpnet-1/corpora.tgz -C "$corpora" .
    rm -rf "$tmp"
    du -sh .gpu-mpnet-?
    for d in .gpu-mpnet-?; do  # each call carries one part beside the working tree (~2 MB): 64 MiB in all
        (( $(du -sb "$d" | cut -f1) < 62 * 1024 * 1024 )) || { echo "$d is over 62 MiB: too big to carry"; exit 1; }
    done
    ;;
mpnet-part)
    # calls 1-3 (carry [".gpu-mpnet-N"]): land one part; the parts of earlier calls stay on the warm machine
    ls -la .gpu-mpnet-*/
    ;;
mpnet)
    # call 4 (carry [".gpu-mpnet-4"], within the warm window of call 3): assemble, check, and run the g1-mpnet study
    shift
    setup
    cat .gpu-mpnet-1/part .gpu-mpnet-2/part .gpu-mpnet-3/part .gpu-mpnet-4/part > /tmp/mpnet.tar
    (cd /tmp && sha256sum -c "$OLDPWD/.gpu-mpnet-1/SHA256SUMS") || { echo "mpnet parts incomplete: stopping"; exit 1; }
    tar xf /tmp/mpnet.tar -C /tmp && tar xzf .gpu-mpnet-1/corpora.tgz -C "$METAFT_CORPORA"
    model=/tmp/mpnet-fp16
    smoke g1-mpnet "$@"
    study g1-mpnet "$(left)" "$@"
    echo "whole call: $(( $(date +%s) - begin )) s" | tee -a "$OUT/timings.txt"
    ;;
run)
    shift
    setup
    tar xzf "$carry/corpora.tgz" -C "$METAFT_CORPORA"
    model="$PWD/$carry/minilm-fp16"
    smoke g1 "$@"
    timeout 60 python3 benchmarks/packed_grouped.py --device cuda --parts minilm --model "$model" --bf16 \
        --minilm-runs 30 --minilm-steps 30 --out "$OUT/packed-grouped-cuda.json" > "$OUT/packed-grouped.log" 2>&1 \
        || echo "packed_grouped.py failed or was cut at 60 s (figures so far kept)"
    tail -n 8 "$OUT/packed-grouped.log"
    study g1 240 "$@"
    study g1-20seeds "$(left)" --seeds 1 2 3 4 5 6 7 8 9 10 11 12 14 15 16 "$@"
    if (( $(left) >= 70 )); then
        timeout "$(left)" python3 benchmarks/packed.py speed --study-units --device cuda --model "$model" \
            --packs 32 --units 2 --out "$OUT/packed-study-units-cuda.json" || echo "packed.py failed or was cut"
    fi
    echo "whole call: $(( $(date +%s) - begin )) s" | tee -a "$OUT/timings.txt"
    ;;
*)
    echo "usage: bash benchmarks/gpu_session.sh prepare|run|prepare-mpnet|mpnet-part|mpnet" >&2
    exit 2
    ;;
esac
