#!/usr/bin/env bash
# Everything one GPU lease runs, in one call (the lease is 15 minutes, one start):
#   1. the step-time / throughput benchmark on the GPU (benchmarks/step_time.py; host vs device-resident batches;
#      in the other suites too with STEP=1),
#   2. EURLEX57K full-profile XML-CNN and AttentionXML, base vs +LCENet, 3 seeds, all cells side by side
#      (configs/experiments/paper_eurlex57k_gpu15min.yaml); or, with SUITE=ablation, the XML-CNN ablation
#      grid (configs/experiments/ablation_eurlex57k_gpu15min.yaml) without the step-time benchmark; or, with
#      SUITE=bert, the BERT family base vs +LCENet (configs/experiments/paper_eurlex57k_bert_gpu15min.yaml) from
#      the data set and encoder that benchmarks/pack_bert_lease.py packed into $PACKED (carry that folder);
#      GRID=configs/experiments/ablation_eurlex57k_bert_gpu15min.yaml runs the BERT head learning-rate check,
#      GRID=configs/experiments/hybrid_eurlex57k_gpu.yaml PREPROCESS_CONFIG=configs/eurlex57k_bert_sparse.yaml
#      bert against bert_sparse (TF-IDF beside the encoder);
#      or, with SUITE=converged FAMILY=xmlcnn|attentionxml|sparse, configs/experiments/converged_gpu_$FAMILY.yaml (the
#      converged full-shape profile; GRID names another grid of that family, e.g.
#      configs/experiments/converged_gpu_xmlcnn_default.yaml; BERT's is SUITE=bert
#      GRID=configs/experiments/converged_gpu_bert.yaml).
#   SUITE=amazoncat generates the full AmazonCat-13K shape (lcenet synth, 14 processes) and trains one epoch of
#   XML-CNN base vs +LCENet on it (configs/experiments/amazoncat13k_epoch_gpu.yaml; GRID and SCALE override the
#   grid and the scale, e.g. for a CPU dry run at a tiny scale).
#   SUITE=scale runs only benchmarks/scale_step.py on the GPU (dense and shortlist training steps, peak memory and
#   predict latency from 4K to 500K labels; about 16 short processes) into $OUT/scale_cuda.json.
# The report (report.md + figures) is generated on the device, so $OUT holds records, report and plots.
# Results come back through $OUT: the step-time record, logs, and the experiment directory without weights.
#   DATA=.device_data/EURLEX57K OUT=/tmp/out bash benchmarks/gpu_suite.sh
# A call carries at most 64 MiB, and the tracked tree (35 MiB) with EURLEX57K's gzipped texts (41 MiB) is more, so
# the texts travel as xz (16 MiB) and the suite unpacks each {split}_texts.txt.xz in $DATA first. To pack them here:
#   mkdir -p .device_data/EURLEX57K && for s in train dev test; do cp ../shared/data/EURLEX57K/${s}_labels.txt.gz \
#       .device_data/EURLEX57K/ && zcat ../shared/data/EURLEX57K/${s}_texts.txt.gz | xz -9 -T2 \
#       > .device_data/EURLEX57K/${s}_texts.txt.xz; done
#   SUITE=bert PACKED=.device_data/bert OUT=/tmp/out bash benchmarks/gpu_suite.sh
set -u
DATA=${DATA:-.device_data/EURLEX57K}
OUT=${OUT:-/tmp/lcenet_gpu_out}
SUITE=${SUITE:-paper}  # paper | ablation | bert | converged | scale | amazoncat
STEP_TIMEOUT=${STEP_TIMEOUT:-75}
TRAIN_TIMEOUT=${TRAIN_TIMEOUT:-390}  # keep it above the grid's train.max_seconds
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 LCENET_CACHE=${LCENET_CACHE:-/tmp/lcenet_cache} OMP_NUM_THREADS=1
started=$(date +%s)
stamp() { echo "[$(( $(date +%s) - started ))s] $*" | tee -a "$OUT/suite.log"; }

stamp "environment"
for packed in "$DATA"/*_texts.txt.xz; do  # python's lzma: the device image need not have xz
    [ -e "$packed" ] && [ ! -e "${packed%.xz}" ] || continue
    python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
        "$packed" "${packed%.xz}" || stamp "unpacking $packed failed"
done
{ nvidia-smi; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"; nproc; ls ~/.cache/huggingface/hub 2>&1 | head; } \
    > "$OUT/env.txt" 2>&1

if [ "$SUITE" = scale ]; then
    stamp "scale benchmark"
    timeout "${SCALE_TIMEOUT:-480}" python3 benchmarks/scale_step.py --device cuda --repeats 5 \
        --output "$OUT/scale_cuda.json" > "$OUT/scale.log" 2>&1 || stamp "scale benchmark exit $?"
    stamp "done"
    exit 0
fi

if [ "$SUITE" = paper ] || [ "${STEP:-0}" = 1 ]; then
    stamp "step-time benchmark"
    timeout "$STEP_TIMEOUT" python3 benchmarks/step_time.py --device auto --repeats 10 --paths host resident \
        --output "$OUT/step_time_cuda.json" > "$OUT/step_time.log" 2>&1 || stamp "step-time benchmark exit $?"
fi

# The tokenizer and the data settings of preprocess must be the grid's, so that its cache entries are the ones used.
preprocess_args=(--config configs/eurlex57k_xmlcnn.yaml)
grid=configs/experiments/${SUITE}_eurlex57k_gpu15min.yaml
if [ "$SUITE" = converged ]; then
    grid=${GRID:-configs/experiments/converged_gpu_${FAMILY:?set FAMILY=xmlcnn, attentionxml or sparse}.yaml}
    preprocess_args=(--config "configs/eurlex57k_$FAMILY.yaml" --set "data.max_docs={dev: 2000}" --set data.sample_seed=0)
fi
if [ "$SUITE" = bert ]; then
    stamp "unpack the data set and the encoder"
    DATA=/tmp/bert_lease
    python3 benchmarks/pack_bert_lease.py unpack "${PACKED:-.device_data/bert}" "$DATA" || stamp "unpack exit $?"
    set -- --set "model_args.pretrained=$DATA/encoder" "$@"
    preprocess_args=(--config "${PREPROCESS_CONFIG:-configs/eurlex57k_bert.yaml}" --set "data.max_docs={dev: 2000}")
    grid=${GRID:-configs/experiments/paper_eurlex57k_bert_gpu15min.yaml}
fi
if [ "$SUITE" = bert ] && [[ "$grid" == *converged* ]]; then
    preprocess_args+=(--set data.sample_seed=0)  # the converged grids draw their dev documents at random
fi
data_args=(--data "eurlex57k=$DATA")
if [ "$SUITE" = amazoncat ]; then
    grid=${GRID:-configs/experiments/amazoncat13k_epoch_gpu.yaml}
    EXP=${EXP:-/tmp/$(basename "$grid" .yaml)}
    DATA=$EXP/data/amazoncat13k  # where the experiment looks for its synthetic data set (it skips generating it)
    data_args=()
    stamp "generate the AmazonCat-13K shape"
    python3 -m lcenet.cli synth --shape amazoncat13k --scale "${SCALE:-1}" --seed 0 --workers 14 --output "$DATA" \
        > "$OUT/synth.log" 2>&1 || stamp "synth exit $?"
    preprocess_args=(--config configs/eurlex57k_xmlcnn.yaml --set "data.max_docs={dev: 2000, test: 20000}"
                     --set data.sample_seed=0)
fi
EXP=${EXP:-/tmp/$(basename "$grid" .yaml)}

stamp "preprocess (fills the tokenization cache once for all cells)"
python3 -m lcenet.cli preprocess --data "$DATA" "${preprocess_args[@]}" "$@" \
    > "$OUT/preprocess.log" 2>&1 || stamp "preprocess exit $?"

stamp "experiment"
timeout "$TRAIN_TIMEOUT" python3 -m lcenet.cli experiment "$grid" \
    "${data_args[@]}" --output "$EXP" --no-report "$@" > "$OUT/experiment.log" 2>&1 \
    || stamp "experiment exit $?"
pkill -f "lcenet.cli train .*--output $EXP/" 2>/dev/null  # this grid's cells only, never other runs
sleep 1

stamp "report"
python3 -m lcenet.cli report "$EXP" > "$OUT/report.log" 2>&1 || stamp "report exit $?"

stamp "pack"
tar czf "$OUT/experiment.tar.gz" --exclude='*.safetensors' --exclude='model' --exclude='data' -C "$(dirname "$EXP")" "$(basename "$EXP")"
stamp "done"
