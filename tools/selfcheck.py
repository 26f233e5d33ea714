"""Check this machine before training: Paddle build, devices, half-precision kernels, and a few real training
steps of a tiny model in fp32 and each half precision the device supports, and whether two runs with
--deterministic give bit-identical embeddings ("repeatability"; one line per check).

    python tools/selfcheck.py             # this process's device
    python tools/selfcheck.py --nproc 2   # also through paddle.distributed.launch with 2 ranks

Exits 0 when every check passed, 1 otherwise. Missing fp16/bf16 kernels (every CPU) are reported, not failed.
"""

import sys

from ppti.tool_cli import quiet_build_warnings, tool_parser


def main(argv=None) -> int:
    parser = tool_parser("selfcheck.py", __doc__)
    parser.add_argument("--nproc", type=int, default=None, metavar="N",
                        help="Also train with N ranks through paddle.distributed.launch and check that every rank "
                             "ends with bit-identical rows (GPUs: N <= visible GPUs).")
    args = parser.parse_args(argv)
    if args.nproc is not None and args.nproc < 2:
        parser.error(f"--nproc must be >= 2 (got {args.nproc})")
    quiet_build_warnings()
    from ppti.selfcheck import selfcheck

    return selfcheck(args.nproc, print_line=lambda line: print(line, flush=True))


if __name__ == "__main__":
    sys.exit(main())
