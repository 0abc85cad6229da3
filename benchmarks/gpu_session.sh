#!/usr/bin/env bash
# The GPU checks of a session that is lent a device machine, as one prepared call (under 10 minutes).
#
# Here, once (CPU machine, venv active):   bash benchmarks/gpu_session.sh prepare
#   writes .gpu-carry/ (git-ignored, < 64 MiB): a half-precision copy of the default model (metaft loads it
#   back in float32) and the g1 corpora, packed. (all-mpnet-base-v2 is 438 MB even in half precision: more than
#   a call can carry, so its study runs on CPU.)
# There, one `run` call with carry [".gpu-carry"] and timeout_s 600:   bash benchmarks/gpu_session.sh run
#   (extra arguments go to every `metaft run`; a CPU smoke test of this path, 2 min here, packed.py failing for
#   want of CUDA: OUT=/tmp/smoke bash benchmarks/gpu_session.sh run --seeds 42 --ablations no-typicality
#   --meta epochs=0.02 --finetune epochs=0.05 --finetune test_limit=40)
#   (1) benchmarks/packed.py speed --study-units --device cuda: g1 stage-3 study units per hour, one unit at a
#       time vs banks of 8 / 32 runs in lock step (issue 17), on the half-precision copy (90 s cap);
#   (2) the 20-seed g1 study (benchmarks/configs/g1-20seeds.yaml, packed: --pack auto), as far as 330 s go;
#   (3) the label-noise control (benchmarks/configs/g1-noise.yaml), packed, with what is left of 540 s.
#   They write into $OUT (at most 8 files come back, so each study folder comes back as one .tgz of its
#   study.json, report.md, config.json and plots); copy them into benchmarks/results/ here afterwards:
#   packed-study-units-cuda.json, g1-20seeds/ and g1-noise/ (a cut study: `metaft report --complete-seeds`).
set -euo pipefail
cd "$(dirname "$0")/.."
carry=.gpu-carry

case "${1:-}" in
prepare)
    corpora="${METAFT_CORPORA:-../shared/data}"
    mkdir -p "$carry"
    python3 - "$carry/minilm-fp16" <<'EOF'
import sys
from transformers import AutoModel
from metaft.hub import load_tokenizer, resolve_model
AutoModel.from_pretrained(resolve_model("minilm")).half().save_pretrained(sys.argv[1])
load_tokenizer("minilm").save_pretrained(sys.argv[1])
EOF
    tar czf "$carry/corpora.tgz" -C "$corpora" SHA256SUMS README.md sst2 mr cr
    du -sh "$carry"
    ;;
run)
    export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    export METAFT_CORPORA=/tmp/corpora OUT="${OUT:-/tmp/gpu-out}"
    mkdir -p "$METAFT_CORPORA" "$OUT"
    tar xzf "$carry/corpora.tgz" -C "$METAFT_CORPORA"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
    begin=$(date +%s)  # the whole call must end inside the device's 600 s: the studies share what is left of 540 s
    start=$(date +%s)
    timeout 90 python3 benchmarks/packed.py speed --study-units --device cuda --model "$PWD/$carry/minilm-fp16" \
        --packs 8 32 --units 2 --out "$OUT/packed-study-units-cuda.json" || echo "packed.py failed or ran out of its 90 s"
    echo "packed study units: $(( $(date +%s) - start )) s"
    shift || true
    study() {  # name, seconds: run (or resume) benchmarks/configs/<name>.yaml, packed, and pack its results
        local name="$1" limit="$2"; shift 2
        local s0; s0=$(date +%s)
        timeout "$limit" python3 -m metaft run --config "benchmarks/configs/$name.yaml" --model "$PWD/$carry/minilm-fp16" \
            --pack auto --out "/tmp/bench-$name" "$@" || echo "the $name study failed or was cut at its $limit s (finished units kept)"
        python3 -m metaft report --complete-seeds "/tmp/bench-$name" > /dev/null 2>&1 || true
        echo "$name study: $(( $(date +%s) - s0 )) s wall"
        mkdir -p "/tmp/out-$name/$name"
        cp /tmp/bench-"$name"/{study.json,report.md,config.json} /tmp/bench-"$name"/*.png "/tmp/out-$name/$name/" 2>/dev/null || true
        tar czf "$OUT/$name.tgz" -C "/tmp/out-$name" "$name"
    }
    study g1-20seeds 330 "$@"
    study g1-noise $(( 540 - ($(date +%s) - begin) )) "$@"
    ;;
*)
    echo "usage: bash benchmarks/gpu_session.sh prepare|run" >&2
    exit 2
    ;;
esac
