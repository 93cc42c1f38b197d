#!/usr/bin/env bash
# Segmenter variants over several seeds, side by side on one CUDA machine, from translators a
# finished `vstk run` trained: every (variant, seed) is one `vstk run` (pool, round 0, round 1,
# prediction, evaluation), all started at once. For comparing segmenter settings over more
# seeds than the 2-core machine has time for; compare variants only within one such call.
#
#   OUT=DIR bash benchmarks/device_seeds.sh WHEELS_DIR FROM_RUN "0 1 2" "base:" "tex:--set nnunet.x=y" ...
#
# FROM_RUN: a folder with translators/NAME/translator.pt and state/translator-NAME.json of a
# finished run (its phantom is generated again, identically, by each run). Each variant is
# "NAME:EXTRA vstk run OPTIONS". Writes $OUT/summary.tsv (variant, seed, round, VS, cochlea,
# mean Dice) and $OUT/runs.tar.gz (each run's evaluation.json, report.md, vstk.log).
set -u
OUT=${OUT:-/tmp/vstk_device_out}
WHEELS=$1; FROM=$2; SEEDS=$3; shift 3
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device.log") 2>&1
export PYTHONUNBUFFERED=1 nnUNet_compile=f
start=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site .
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi -L
echo "installed in $(( $(date +%s) - start )) s"
translators=$(cd "$FROM/translators" && ls | paste -sd,)
pids=()
for variant in "$@"; do
    name=${variant%%:*}; extra=${variant#*:}
    for seed in $SEEDS; do
        run=/tmp/runs/$name-s$seed
        mkdir -p "$run/state"
        for t in ${translators//,/ }; do
            mkdir -p "$run/translators/$t"
            cp "$FROM/translators/$t/translator.pt" "$run/translators/$t/"
            cp "$FROM/state/translator-$t.json" "$run/state/"
        done
        # shellcheck disable=SC2086
        timeout "${RUN_TIMEOUT:-480}" python3 -m vstk run --translators "$translators" --profile cpu --device cuda \
            --out "$run" --set nnunet.seed=$seed --set nnunet.n_proc_da=2 $extra > "$run.log" 2>&1 &
        pids+=($!)
    done
done
for pid in "${pids[@]}"; do wait "$pid"; done
echo "all runs ended at t = $(( $(date +%s) - start )) s"
printf "variant\tseed\tround\tVS\tcochlea\tmean\tstage seconds\n" > "$OUT/summary.tsv"
for log in /tmp/runs/*.log; do
    run=${log%.log}; tail -2 "$log"
    python3 - "$run" >> "$OUT/summary.tsv" <<'EOF'
import json, pathlib, sys
run = pathlib.Path(sys.argv[1])
variant, seed = run.name.rsplit("-s", 1)
state = run / "state" / "evaluate.json"
if not state.is_file():
    print(f"{variant}\t{seed}\tunfinished")
    sys.exit()
seconds = sum(json.loads(p.read_text()).get("seconds", 0) for p in (run / "state").glob("*.json")
              if not p.name.startswith("translator-"))  # those were copied, not trained
for name, s in sorted(json.loads(state.read_text())["scores"].items()):
    print(f"{variant}\t{seed}\t{name}\t{s['VS_dice']:.3f}\t{s['cochlea_dice']:.3f}\t{s['mean_dice']:.3f}\t{seconds:.0f}")
EOF
done
cat "$OUT/summary.tsv"
(cd /tmp/runs && tar czf "$OUT/runs.tar.gz" ./*.log ./*/evaluation.json ./*/report.md ./*/vstk.log 2>/dev/null)
