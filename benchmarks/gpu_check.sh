#!/usr/bin/env bash
# One GPU check, sized for under 5 minutes on one GPU; never part of CI. From the repository root:
#
#     bash benchmarks/gpu_check.sh            # prints one summary at the end; the full outputs stay in $OUT or /tmp
#
# 1. the sync test on the GPU: tests/test_device_sync.py's trials run on cuda (accelerator auto), their steady
#    steps under torch.cuda.set_sync_debug_mode("error") as well as the CPU's count of sync-inducing calls;
# 2. gpu_throughput.py's full table (resnet50 224 px and resnet18 on CIFAR shapes, none / se / cbam, eager and
#    compiled, bf16, channels_last), one repeat, the ablate side's steady steps under sync-debug "error";
# 3. imagefolder_input.py (float / uint8 / nvJPEG input paths);
# 4. step_cost.py: the cost column's stability on the GPU (3 pricings of the headline).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD" MLFLOW_TRACKING_URI=
out="${OUT:-$(mktemp -d /tmp/ablate-gpu-check-XXXX)}"
mkdir -p "$out"
status=()
step() {  # name, command...: run it, keep its output, remember how it ended
  local name="$1"; shift
  local start=$SECONDS
  "$@" > "$out/$name.txt" 2>&1
  status+=("$name: exit $? in $((SECONDS - start)) s")
}
step sync python -m pytest -q -p no:cacheprovider tests/test_device_sync.py -k "waits or divergence"
step throughput python benchmarks/gpu_throughput.py --sync-debug --repeats 1
step imagefolder python benchmarks/imagefolder_input.py
step step_cost python benchmarks/step_cost.py --pricings 3
echo "== ablate GPU check: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
printf '%s\n' "${status[@]}"
echo "== sync";        tail -3 "$out/sync.txt"
echo "== throughput";  sed -n '/training images\/s/,$p' "$out/throughput.txt"
echo "== imagefolder"; tail -12 "$out/imagefolder.txt"
echo "== step cost";   tail -8 "$out/step_cost.txt"
echo "(full outputs: $out)"
