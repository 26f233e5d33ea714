#!/usr/bin/env bash
# What only a GPU can confirm about --deterministic, generator states and multi-card failures (issue 28).
# The CPU test suite checks everything a CPU can; run this once on a GPU machine, from the repository root:
#
#     bash tools/gpu_check.sh            # one GPU is enough; with 2+ GPUs it also kills a rank on purpose
#     bash tools/gpu_check.sh --cpu-dry-run   # checks 2-5 on the CPU, to try the script itself (no self-check)
#
# Each check prints one line: [ ok ], [FAIL], [info] or [skip]; the exit code is 1 if any check failed.
# It takes a few minutes (mostly the self-check's short trainings).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
failed=0
note() { echo "$1"; case "$1" in "[FAIL]"*) failed=1 ;; esac; }

# 1. The self-check: build, kernels, each precision, and the repeatability lines -- two short runs with
#    --deterministic must give bit-identical embeddings on this GPU (and two without it show whether they differ).
device=gpu:0
if [ "${1:-}" = "--cpu-dry-run" ]; then
    gpus=0; device=cpu
else
    gpus=$($PY -c "import paddle; print(paddle.device.cuda.device_count() if paddle.device.is_compiled_with_cuda() else 0)" 2>/dev/null || echo 0)
    if [ "$gpus" -lt 1 ]; then
        note "[skip] no GPU visible to Paddle (a CPU build, or CUDA_VISIBLE_DEVICES): nothing here needs a CPU"
        exit 0
    fi
    nproc_flag=""
    [ "$gpus" -ge 2 ] && nproc_flag="--nproc 2"
    $PY tools/selfcheck.py $nproc_flag | tee /tmp/ppti-gpu-check-selfcheck.txt
    grep -q "^\[FAIL\]" /tmp/ppti-gpu-check-selfcheck.txt && failed=1
fi

# 2-5: kernels and cost, in one Python process on gpu:0
PPTI_CHECK_DEVICE=$device $PY - <<'EOF' || failed=1
import os, sys
import numpy as np
import paddle
import paddle.nn.functional as F

failed = False
def line(ok, text):
    global failed
    failed |= ok is False
    print(f"[{'info' if ok is None else ' ok ' if ok else 'FAIL'}] {text}", flush=True)

paddle.set_device(os.environ["PPTI_CHECK_DEVICE"])
on_gpu = os.environ["PPTI_CHECK_DEVICE"] != "cpu"
from ppti.determinism import make_deterministic, nearest_upsample

# 2. The deterministic upsampling on the GPU: the same output bits as F.interpolate, a gradient equal to it up to
#    the order of the atomic adds, and bit-identical from one call to the next (F.interpolate's may not be).
rng = np.random.default_rng(0)
for dtype in ("float32", "float16"):
    x = paddle.to_tensor(rng.standard_normal((2, 1280, 16, 16)).astype(np.float32)).astype(dtype)
    g = paddle.to_tensor(rng.standard_normal((2, 1280, 32, 32)).astype(np.float32)).astype(dtype)
    def grads(f):
        t = x.detach(); t.stop_gradient = False
        out = f(t)
        (gx,) = paddle.grad([out], [t], [g])
        return out.astype("float32").numpy(), gx.astype("float32").numpy()
    ref_out, ref_g = grads(lambda t: F.interpolate(t, scale_factor=2.0, mode="nearest"))
    ref_g2 = grads(lambda t: F.interpolate(t, scale_factor=2.0, mode="nearest"))[1]
    out, g1 = grads(lambda t: nearest_upsample(t))
    g2 = grads(lambda t: nearest_upsample(t))[1]
    tol = 1e-6 if dtype == "float32" else 1e-2
    line(out.tobytes() == ref_out.tobytes() and np.allclose(g1, ref_g, rtol=tol, atol=tol) and g1.tobytes() == g2.tobytes(),
         f"nearest upsampling ({dtype}): same output bits as F.interpolate, gradient within {tol:g} of it, "
         f"bit-identical call to call; F.interpolate's own gradient call to call: "
         f"{'bit-identical' if ref_g.tobytes() == ref_g2.tobytes() else 'DIFFERS (atomic adds)'}")

# 3. The environment variable makes ppdiffusers' attention use math attention in fp32 (not the cutlass kernel),
#    and what that costs at SD-1.5's largest attention layer at 512 px (8 heads, 4096 tokens, head dim 40).
try:
    import ppdiffusers.patches.paddle_patch as patch
    sdpa = paddle.nn.functional.scaled_dot_product_attention_
    assert on_gpu, "no CUDA memory statistics"
except (ImportError, AttributeError, AssertionError) as exc:
    line(None, f"ppdiffusers' scaled_dot_product_attention_ is not defined on this build ({exc}): attention there "
               "is plain math attention anyway")
else:
    def peak_mib(deterministic: bool) -> tuple[float, bool]:
        os.environ["FLAGS_cudnn_deterministic"] = "True" if deterministic else "False"
        calls = []
        real = patch.memory_efficient_attention
        patch.memory_efficient_attention = lambda *a, **k: calls.append(1) or real(*a, **k)
        try:
            q = paddle.randn([1, 4096, 8, 40], dtype="float32"); q.stop_gradient = False
            paddle.device.cuda.synchronize(); paddle.device.cuda.reset_max_memory_allocated()
            base = paddle.device.cuda.max_memory_allocated()
            out = sdpa(q, q, q)
            out.sum().backward()
            paddle.device.cuda.synchronize()
            return (paddle.device.cuda.max_memory_allocated() - base) / 2**20, bool(calls)
        finally:
            patch.memory_efficient_attention = real
    plain, used_cutlass = peak_mib(False)
    det, used_cutlass_det = peak_mib(True)
    line(not used_cutlass_det, f"fp32 attention with FLAGS_cudnn_deterministic in the environment: "
                               f"{'cutlass (memory-efficient) STILL USED' if used_cutlass_det else 'math attention'}; "
                               f"without it: {'cutlass' if used_cutlass else 'not cutlass'}")
    line(None, f"one SD-1.5 attention layer at 512 px, forward + backward: peak {plain:.0f} MiB without, {det:.0f} MiB "
               f"with --deterministic (docs/gpu.md estimates +512 MiB per layer and image)")
    os.environ.pop("FLAGS_cudnn_deterministic", None)

# 4. Generator states: how many values this build gives, and a save/restore round trip on the GPU's generator.
from ppti import checkpoint
import json
values = len(paddle.get_rng_state()[0].__getstate__())
saved = json.loads(json.dumps(checkpoint.rng_states()))
expected = paddle.rand([5]).numpy().tobytes()
paddle.seed(12345)
checkpoint.set_rng_states(saved)
line(paddle.rand([5]).numpy().tobytes() == expected,
     f"GPU generator state: this build gives {values} values; saved and restored, the stream continues bit for bit")

# 5. The Paddle flags exist in this build (a CPU build has neither).
set_flags, absent = make_deterministic()
line(not absent, f"--deterministic flags set: {', '.join(set_flags) or 'none'}"
                 + (f"; MISSING from this build: {', '.join(absent)}" if absent else ""))
sys.exit(1 if failed else 0)
EOF

# 6. With 2+ GPUs: a rank killed on purpose (SIGKILL, as the out-of-memory killer does) must end every rank within
#    a minute (NCCL would otherwise wait 30 minutes), with one line naming rank 1; the last checkpoint intact.
if [ "$gpus" -ge 2 ]; then
    work=$(mktemp -d /tmp/ppti-gpu-check-XXXX)
    $PY tools/make_tiny_model.py "$work/tiny-sd" --force >/dev/null 2>&1
    start=$(date +%s)
    $PY -m paddle.distributed.launch --gpus 0,1 --log_dir "$work/log" tests/dist_scripts/fail_on_rank.py 1 kill \
        --pretrained_model_name_or_path "$work/tiny-sd" --train_data_dir examples/demo_concept \
        --output_dir "$work/out" --placeholder_token "<demo-toy>" --initializer_token toy --resolution 64 \
        --train_batch_size 1 --max_train_steps 6 --save_steps 1 --checkpointing_steps 1 --report_to none \
        >"$work/console.txt" 2>&1
    seconds=$(( $(date +%s) - start ))
    named=$(grep -ho "rank [0-9]* failed (" "$work/console.txt" "$work"/log/workerlog.* | sort -u | tr '\n' ' ')
    if [ "$named" = "rank 1 failed ( " ] && ls "$work/out/checkpoints" | grep -q "^checkpoint-[0-9]*$"; then
        note "[ ok ] a killed rank (2 GPUs): every rank ended, ${seconds} s in all including start-up; the line names rank 1; a complete checkpoint is there"
    else
        note "[FAIL] a killed rank (2 GPUs): ${seconds} s; lines naming a failed rank: '${named}'; see $work"
    fi
fi

[ "$failed" = 0 ] && echo "all GPU checks passed" || echo "some GPU checks FAILED"
exit $failed
