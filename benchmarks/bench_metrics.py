"""Calibration metrics on ImageNet-val-sized random logits (50,000 x 1,000); wall time printed
last."""

from __future__ import annotations

import argparse
import time

import torch

from als_det.metrics import calibration_metrics, calibration_metrics_from_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--k", type=int, default=1_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(args.n, args.k, generator=g) * 3
    labels = torch.randint(0, args.k, (args.n,), generator=g)
    probs = logits.softmax(1)
    start = time.perf_counter()
    m = calibration_metrics(probs, labels)
    from_probs = time.perf_counter() - start
    start = time.perf_counter()
    calibration_metrics_from_logits(logits, labels)
    from_logits = time.perf_counter() - start
    print(f"{args.n} x {args.k}: ece={m['ece']:.4f} ace={m['ace']:.4f} nll={m['nll']:.3f}")
    print(f"calibration_metrics(probs): {from_probs:.2f} s; from logits: {from_logits:.2f} s")
    print(f"wall time: {from_probs + from_logits:.2f} s")


if __name__ == "__main__":
    main()
