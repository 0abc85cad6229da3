#!/usr/bin/env bash
# The GPU checks of a session that is lent a device machine, as one prepared call (under 10 minutes).
#
# Here, once (CPU machine, venv active):   bash benchmarks/gpu_session.sh prepare
#   writes .gpu-carry/ (git-ignored, < 64 MiB): a half-precision copy of the default model (metaft loads it
#   back in float32) and the corpora the studies read, packed.
# There, one `run` call with carry [".gpu-carry"] and timeout_s 600:   bash benchmarks/gpu_session.sh run
#   (extra arguments go to `metaft run`; a CPU smoke test of this path: OUT=/tmp/smoke bash
#   benchmarks/gpu_session.sh run --meta epochs=0.02 --finetune epochs=0.05)
#   (1) benchmarks/speed.py --device cuda on a BERT-base-shaped random model: stage 2/3 against the Trainer,
#       stage 2 compiled (reduce-overhead, widths of 32), % of the bf16 matmul ceiling;
#   (2) benchmarks/packed.py speed --device cuda: g1 stage-3 units per hour, one unit at a time vs banks of
#       8 / 32 runs in lock step (issue 17), on the half-precision copy of the default model (120 s cap);
#   (3) the Amazon study (benchmarks/configs/amazon.yaml) on the half-precision copy of the default model.
#   They write into $OUT (at most 8 files come back, so the study folder comes back as one amazon.tgz); copy
#   them into benchmarks/results/ here afterwards: speed-cuda.json, packed-speed-cuda.json, and
#   amazon/{study.json,report.md,config.json,*.png} from amazon.tgz.
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
    tar czf "$carry/corpora.tgz" -C "$corpora" SHA256SUMS README.md sst2 mr cr amazon
    du -sh "$carry"
    ;;
run)
    export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    export METAFT_CORPORA=/tmp/corpora OUT="${OUT:-/tmp/gpu-out}"
    mkdir -p "$METAFT_CORPORA" "$OUT"
    tar xzf "$carry/corpora.tgz" -C "$METAFT_CORPORA"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
    begin=$(date +%s)  # the whole call must end inside the device's 600 s: the study gets what is left of 540 s
    start=$(date +%s)
    timeout 300 python3 benchmarks/speed.py --device cuda --model bert-base-random --steps 100 --repeats 3 \
        --e2e-scale 0 --minilm "$carry/minilm-fp16" --out "$OUT/speed-cuda.json" || echo "speed.py failed or ran out of its 300 s"
    echo "speed: $(( $(date +%s) - start )) s"
    start=$(date +%s)
    timeout 120 python3 benchmarks/packed.py speed --device cuda --model "$PWD/$carry/minilm-fp16" --packs 8 32 \
        --steps 30 --out "$OUT/packed-speed-cuda.json" || echo "packed.py failed or ran out of its 120 s"
    echo "packed speed: $(( $(date +%s) - start )) s"
    start=$(date +%s)
    shift
    left=$(( 540 - (start - begin) ))
    timeout "$left" python3 -m metaft run --config benchmarks/configs/amazon.yaml --model "$PWD/$carry/minilm-fp16" \
        --out /tmp/bench-amazon "$@" || echo "the amazon study failed or was cut at its ${left} s (partial results kept)"
    echo "amazon study: $(( $(date +%s) - start )) s wall"
    mkdir -p /tmp/amazon-out/amazon
    cp /tmp/bench-amazon/{study.json,report.md,config.json} /tmp/bench-amazon/*.png /tmp/amazon-out/amazon/ 2>/dev/null || true
    tar czf "$OUT/amazon.tgz" -C /tmp/amazon-out amazon
    ;;
*)
    echo "usage: bash benchmarks/gpu_session.sh prepare|run" >&2
    exit 2
    ;;
esac
