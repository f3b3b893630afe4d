#!/usr/bin/env bash
# Train the toy StreamingT2V (VAE, text encoder + ModelScope base UNet, CAM, CAM + APM, refiner) on the
# procedural toy world, on a CPU, in about an hour (docs/training.md has the plan and the timings).
#
#   bash scripts/train_toy_model.sh          # run or resume; finished stages are skipped
#
# Stages write their model files (official layouts) into runs/toy/<nn_stage>/ and checkpoints into
# runs/toy/<nn_stage>/run/. Stopped at any point (Ctrl-C, kill, power loss), the same command resumes from the
# last checkpoint of the stage it was in (checkpoints every 100 steps and every 5 minutes; Ctrl-C/SIGTERM save
# one first). The result goes to models/toy/ (ST2V_TOY_OUT): streamingt2v_toy.safetensors,
# modelscope_t2v_toy.safetensors and refiner_toy_{non_ema.pth,open_clip.bin,sd21.ckpt}; then a 240-frame video
# is generated as a check (runs/toy/eval_240.mp4, object colour drift printed; ST2V_TOY_EVAL=0 skips it).
#
# Deterministic: the same seeds give the same files on the same machine and thread count. Step counts can be
# overridden for smoke runs: ST2V_TOY_{VAE,BASE,CAM,CAM_APM,REFINER}_STEPS, ST2V_TOY_VIDEOS, ST2V_TOY_REFINER_VIDEOS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${ST2V_VENV:-$ROOT/.venv}/bin/python"
RUN="${ST2V_TOY_RUN:-$ROOT/runs/toy}"
OUT="${ST2V_TOY_OUT:-$ROOT/models/toy}"
# One thread by default: these small tensors gain little from a second thread, and on a shared machine two
# threads slowed a step 20x (measured); ST2V_TOY_THREADS=2 on an otherwise idle 2-core machine.
THREADS="${ST2V_TOY_THREADS:-1}"
export OMP_NUM_THREADS="$THREADS"

VIDEOS="${ST2V_TOY_VIDEOS:-384}"          # toy videos of 48 frames in the latent pool (18,432 frames)
# one object on a solid background (`--toy-simple`): the scenes of the shipped workflows and the ablation
REFINER_VIDEOS="${ST2V_TOY_REFINER_VIDEOS:-96}"
VAE_STEPS="${ST2V_TOY_VAE_STEPS:-800}"      # 16 frames per step
BASE_STEPS="${ST2V_TOY_BASE_STEPS:-3000}"   # 4 clips of 16 frames per step
CAM_STEPS="${ST2V_TOY_CAM_STEPS:-400}"      # 4 clips (8 conditioning + 16 chunk frames, anchor) per step
CAM_APM_STEPS="${ST2V_TOY_CAM_APM_STEPS:-500}"
REFINER_STEPS="${ST2V_TOY_REFINER_STEPS:-250}"  # 2 clips of 24 frames at 80x64 per step

train() {
  local stage="$1"; shift
  echo "[toy] ---- $stage ----" >&2
  "$PY" -m streaming_core.train "$stage" --threads "$THREADS" --cache "$RUN/cache" --toy-frames 48 --toy-simple --seed 0 "$@"
}

"$PY" -m streaming_core.train init --out "$RUN/00_init" --config toy --name toy --seed 0
train vae     --init "$RUN/00_init" --out "$RUN/01_vae"     --toy-videos "$VIDEOS" --steps "$VAE_STEPS" --batch 16 \
              --lr 2e-3 --warmup 30
train base    --init "$RUN/01_vae"  --out "$RUN/02_base"    --toy-videos "$VIDEOS" --steps "$BASE_STEPS" --batch 4 \
              --lr 1e-3 --warmup 50
train cam     --init "$RUN/02_base" --out "$RUN/03_cam"     --toy-videos "$VIDEOS" --steps "$CAM_STEPS" --batch 4 \
              --lr 1e-3 --warmup 30 --from-base
train cam_apm --init "$RUN/03_cam"  --out "$RUN/04_cam_apm" --toy-videos "$VIDEOS" --steps "$CAM_APM_STEPS" --batch 4 \
              --lr 5e-4 --warmup 30 --save-dtype fp16
train refiner --init "$RUN/04_cam_apm" --out "$RUN/05_refiner" --toy-videos "$REFINER_VIDEOS" \
              --steps "$REFINER_STEPS" --batch 2 --lr 5e-4 --warmup 30 --native 80x64 --save-dtype fp16

mkdir -p "$OUT"
cp "$RUN/04_cam_apm/streamingt2v_toy.safetensors" "$RUN/04_cam_apm/modelscope_t2v_toy.safetensors" "$OUT/"
cp "$RUN/05_refiner/refiner_toy_non_ema.pth" "$RUN/05_refiner/refiner_toy_open_clip.bin" \
   "$RUN/05_refiner/refiner_toy_sd21.ckpt" "$OUT/"
echo "[toy] model files in $OUT:" >&2
ls -l "$OUT" >&2
if [ "${ST2V_TOY_EVAL:-1}" != "0" ]; then
  "$PY" -m streaming_core.train eval --model "$OUT" --frames 240 --steps 10 --threads "$THREADS" \
    --video "$RUN/eval_240.mp4"
fi
