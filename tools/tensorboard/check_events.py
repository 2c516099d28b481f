#!/usr/bin/env python3
"""Read xtuner's TensorBoard event files with the real `tensorboard` package and print them.

Proves that what src/xtuner/train/tensorboard.cc writes is what TensorBoard reads: the same
loader (EventAccumulator) that `tensorboard --logdir` uses, CRC checks included. Needs only
`pip install tensorboard` (no TensorFlow), best in a virtual environment outside the repository:

    python3 -m venv /work/venv-tb && /work/venv-tb/bin/pip install tensorboard
    XT_TENSORBOARD_OUT=/tmp/tb build/tensorboard_test --gtest_filter='*DemoRun*'
    /work/venv-tb/bin/python tools/tensorboard/check_events.py /tmp/tb

PATH is a run directory (all its event files, as TensorBoard reads them, with the points of a
crashed attempt purged after a SessionLog START) or one event file. Prints every scalar tag and
its (step, value) points; exits 1 when there is no scalar, 2 on a read error.
"""

import argparse
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", help="a run directory or one events.out.tfevents.* file")
    parser.add_argument("--tag", action="append", help="print only these tags (repeatable)")
    args = parser.parse_args()

    try:
        from tensorboard.backend.event_processing import event_accumulator
    except ImportError:
        print("check_events.py: the tensorboard package is missing: pip install tensorboard",
              file=sys.stderr)
        return 2

    files = ([args.path] if os.path.isfile(args.path) else
             sorted(os.path.join(args.path, f) for f in os.listdir(args.path) if "tfevents" in f))
    print(f"files: {len(files)}")
    for f in files:
        print(f"  {os.path.basename(f)} ({os.path.getsize(f)} bytes)")

    acc = event_accumulator.EventAccumulator(
        args.path, size_guidance={event_accumulator.SCALARS: 0})  # 0: keep every point
    try:
        acc.Reload()
    except Exception as e:  # DataLossError on a bad CRC, and the like
        print(f"check_events.py: {args.path}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2

    print(f"file_version: {acc.file_version}")
    tags = acc.Tags()["scalars"]
    if args.tag:
        tags = [t for t in tags if t in args.tag]
    if not tags:
        print("check_events.py: no scalars", file=sys.stderr)
        return 1
    for tag in tags:
        points = acc.Scalars(tag)
        body = ", ".join(f"{p.step}={p.value:.6g}" for p in points)
        print(f"{tag} ({len(points)} points): {body}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
