#!/usr/bin/env bash
# One prepared run on a CUDA machine: checks that vstk trains on the GPU and measures the
# `paper` profile. Every section has its own time cap and goes on after a failure; all output
# goes to $OUT/device.log.
#
#   OUT=DIR bash benchmarks/device_check.sh [WHEELS_DIR] [OFFICIAL_DIR]
#
# WHEELS_DIR (optional): wheels of nnU-Net and the other packages the machine lacks, installed
# into /tmp/site first. OFFICIAL_DIR (optional): checkouts of the official CUT (cut/) and
# QS-Attn (qsattn/) repositories for the speed comparison; not part of vstk.
#
# Sections, each capped: 1. `vstk run` on CUDA with the cpu profile as it is (CUDA end to end;
# on an H200 it reached round-1 epoch 15/16 in 262 s, so the cap is 300 s), nnU-Net's
# torch.compile off to save its minutes; 2. stock nnU-Net 3d_fullres (the paper profile,
# torch.compile as nnU-Net does it) trained on labelled phantom hrT2 for 4 x 40 iterations:
# seconds per iteration and the whole train/predict path on CUDA (106 s of training + 6 s
# of prediction on an H200); 3. translator step time at the paper profile (256 px, ResNet-9,
# ngf 64), ours against the official code on the same GPU (CycleGAN and QS-Attn with their
# official twins took the 90 s; CUT and NICE-GAN come last and may not fit).
set -u
OUT=${OUT:-/tmp/vstk_device_out}
WHEELS=${1:-}
OFFICIAL=${2:-}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device.log") 2>&1
export PYTHONUNBUFFERED=1
start=$(date +%s)
section() { echo "=== $1 (t = $(( $(date +%s) - start )) s)"; }

section install
if [ -n "$WHEELS" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site \
    . examples/vstk-cut examples/vstk-nicegan
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi -L
python3 -c "import torch, nnunetv2; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
python3 -m vstk plugins

section "phantom (in the background) and vstk run on CUDA, cpu profile"
python3 -m vstk phantom /tmp/vstk_phantom --target-labels --no-png > /tmp/phantom.log 2>&1 &
phantom_pid=$!
nnUNet_compile=f timeout 300 python3 -m vstk run --translators cyclegan,qsattn --profile cpu --device cuda \
    --out /tmp/vstk_run --set nnunet.n_proc_da=8 --set nnunet.n_proc_preprocessing=8
echo "vstk run exit status $?"
(cd /tmp/vstk_run 2>/dev/null && tar czf "$OUT/run.tar.gz" evaluation.json report.md run.json vstk.log figures \
    translators/*/losses.csv 2>/dev/null)
wait $phantom_pid; tail -1 /tmp/phantom.log

section "nnU-Net paper profile (3d_fullres) on labelled hrT2"
timeout 150 python3 benchmarks/segmenter_ceiling.py --phantom /tmp/vstk_phantom --out /tmp/vstk_ceiling \
    --profile paper --device cuda --set num_epochs=4 --set iterations_per_epoch=40 --json "$OUT/nnunet_paper.json"

section "translator speed, paper profile"
official=()
[ -n "$OFFICIAL" ] && official=(--official-cut "$OFFICIAL/cut" --official-qsattn "$OFFICIAL/qsattn")
timeout 90 python3 benchmarks/translator_speed.py --profile paper --device cuda --steps 20 --rounds 1 \
    --translators cyclegan,qsattn,cut,nicegan "${official[@]}" --json "$OUT/translator_speed.json"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
section done
