# Sourced by the sbatch scripts: environment shared by every lvxattn job step.
# LVX_ENV_SETUP  a command run first (module loads, venv activation), e.g.
#                "module load cuda/12.6 openmpi; source $HOME/lvxattn/.venv/bin/activate"
# LVX_ROOT       the repository checkout (default: the submit directory)
# GPU_BIND       "task" (default): srun --gpus-per-task=1, each rank sees one GPU;
#                "node": every rank sees the node's GPUs and takes SLURM_LOCALID's
#                (use it when per-task GPU isolation keeps NCCL off NVLink/P2P)
set -euo pipefail
if [ -n "${LVX_ENV_SETUP:-}" ]; then eval "$LVX_ENV_SETUP"; fi
LVX_ROOT=${LVX_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$LVX_ROOT"
export NCCL_NVLS_ENABLE=0          # NVLink SHARP multicast off (unneeded for P2P rings; fails on some hosts)
export PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-4}}
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-4}}
case "${GPU_BIND:-task}" in
  task) SRUN_GPU=(--gpus-per-task=1 --gpu-bind=single:1) ;;
  node) SRUN_GPU=(--gpus-per-node="$GPUS_PER_NODE" --gpu-bind=none) ;;
  *) echo "GPU_BIND must be 'task' or 'node', got '$GPU_BIND'" >&2; exit 2 ;;
esac
# One rank per GPU, block mapping (consecutive ranks share a node: the ring's
# inter-node hops are as few as possible), cores bound per rank.
SRUN=(srun --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$OMP_NUM_THREADS" --cpu-bind=cores
      --distribution=block:block "${SRUN_GPU[@]}" --kill-on-bad-exit=1)
echo "lvxattn job $SLURM_JOB_ID: $SLURM_JOB_NUM_NODES node(s) x $GPUS_PER_NODE GPUs, GPU_BIND=${GPU_BIND:-task}, $(git -C "$LVX_ROOT" rev-parse --short HEAD 2>/dev/null || echo no-git)"
