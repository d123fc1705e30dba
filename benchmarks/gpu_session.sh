#!/usr/bin/env bash
# Everything the results table and the speed claims need from a GPU machine, in three parts that
# each fit in 10 minutes, so that a lent GPU's time goes to measuring, not to typing:
#
#   benchmarks/gpu_session.sh check OUT           # GPU tests, lvm bench (plain and --compile), bf16 numerics
#   benchmarks/gpu_session.sh shapes OUT          # lvm table --dataset shapes, default budgets
#   benchmarks/gpu_session.sh fashion-mnist OUT   # lvm table --dataset fashion-mnist, default budgets
#   benchmarks/gpu_session.sh ddp OUT             # several GPUs: vae on shapes under torchrun on all, and on one
#
# Each part leaves a log and a tarball of what it wrote in OUT; unpack the tarball in the repo's
# root, then `lvm report` rewrites the README's table. Fashion-MNIST must be on disk: Debian's
# /usr/share/datasets/fashion-mnist, or torchvision's layout under $LVM_DATA_DIR (a machine
# without the package: copy FashionMNIST/raw/*.gz there and set LVM_DATA_DIR). The parts that
# train take the models' default budgets; `check` runs bf16_numerics at 5 epochs, 2 seeds.
set -euo pipefail
part=${1:?part: check, shapes, fashion-mnist or ddp}
out=${2:?output folder}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TQDM_DISABLE=1 MPLBACKEND=Agg
lvm() { python -m lvm "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

case "$part" in
  check)
    python -m pytest -q tests/test_gpu.py 2>&1 | tee "$out/test_gpu.log"
    mkdir -p figures/bench figures/bf16
    for model in vae vqvae; do
      lvm bench "$model" --device cuda --steps 100 | tee "figures/bench/$model-cuda.json"
      lvm bench "$model" --device cuda --steps 100 --compile | tee "figures/bench/$model-cuda-compile.json"
    done
    python benchmarks/bf16_numerics.py --device cuda --epochs 5 --out figures/bf16/cuda.json 2>&1 | tee "$out/bf16.log"
    tar czf "$out/check.tgz" figures/bench figures/bf16
    ;;
  shapes|fashion-mnist)
    lvm table --dataset "$part" --device cuda --overwrite 2>&1 | tee "$out/table-$part.log"
    tar czf "$out/table-$part.tgz" --exclude='*.pt' figures/table-"$part".json figures/*/"$part"*
    ;;
  ddp)
    # the multi-GPU line (docs/distributed.md): NCCL, one process per GPU, the same global batch;
    # its row beside the one-GPU row of the same run, both float32 to compare the curves
    gpus=$(nvidia-smi -L | wc -l)
    if [ "$gpus" -lt 2 ]; then
      echo "ddp: $gpus GPU lent; the multi-GPU line needs two or more" | tee "$out/ddp.log"
      exit 0
    fi
    mkdir -p figures/ddp
    lvm run vae --dataset shapes --device cuda --amp off --overwrite --out figures/ddp/vae-shapes-1gpu 2>&1 | tee "$out/ddp.log"
    python -m torch.distributed.run --nproc-per-node "$gpus" -m lvm run vae --dataset shapes --amp off --overwrite \
      --out "figures/ddp/vae-shapes-${gpus}gpu" 2>&1 | tee -a "$out/ddp.log"
    tar czf "$out/ddp.tgz" --exclude='*.pt' figures/ddp
    ;;
  *)
    echo "unknown part '$part': check, shapes, fashion-mnist or ddp" >&2
    exit 2
    ;;
esac
