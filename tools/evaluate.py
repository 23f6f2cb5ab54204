#!/usr/bin/env python
"""Evaluate pretrained checkpoints: classification, calibration, context-only views, where the model looks.

    python tools/evaluate.py --checkpoint out/hard/best.pth --checkpoint out/als/best.pth --data datasets/context_bias --out out/eval
    torchrun --nproc_per_node 8 tools/evaluate.py --checkpoint A.pth --checkpoint B.pth --data /data/imagenet --out out/eval

Writes DIR/metrics.json, DIR/report.md and PNG figures (reliability diagrams, bg_only confidence, CAM grid).

An ImageNet-9 Backgrounds Challenge tree (ROOT/<variant>/val/<class>/*, variants original,
only_bg_b, only_bg_t, no_fg, only_fg, mixed_same, mixed_rand, mixed_next) is recognised by its
original/val folder: per-variant accuracy and BG-Gap go to DIR/in9_metrics.json and DIR/in9_report.md.

    python tools/evaluate.py --checkpoint out/r50_als/last.pth --data bg_challenge --in-to-in9 in_to_in9.json --out out/in9
"""
from __future__ import annotations

import argparse
import logging

from als_det.analysis.backgrounds import evaluate_in9, is_in9_layout
from als_det.analysis.evaluate import EvalOptions, evaluate_checkpoints
from als_det.report.backgrounds import summary_lines


# Options of the box-based evaluation that an ImageNet-9 tree has no use for.
IN9_IGNORES = ("split", "boxes", "val_labels", "baseline", "temperature_scaling", "fill", "min_crop_fraction", "cam",
               "grid_images", "max_images", "cache_dir")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", required=True, help="a pretraining checkpoint (repeat)")
    p.add_argument("--name", action="append", default=None,
                   help="a model name per --checkpoint, in order (default: its label strategy)")
    p.add_argument("--data", required=True, help="data root (ImageNet layout with Annotation/<split>)")
    p.add_argument("--split", default="val")
    p.add_argument("--boxes", default="", help="box source for the split (default ROOT/Annotation/<split>)")
    p.add_argument("--val-labels", default="", help="labels file for a flat val folder")
    p.add_argument("--out", default="output/evaluate", help="output folder")
    p.add_argument("--baseline", default=None, help="model name the headline ratios divide by (default: hard)")
    p.add_argument("--temperature-scaling", action="store_true", help="fit T on a seeded half of val, report both")
    p.add_argument("--seed", type=int, default=0, help="seed of the temperature-scaling split")
    p.add_argument("--fill", choices=("black", "mean", "blur"), default="black", help="fill for box variants")
    p.add_argument("--min-crop-fraction", type=float, default=0.1,
                   help="outside_crop: skip images whose largest box-free crop is smaller than this fraction")
    p.add_argument("--cam", choices=("cam", "gradcam"), default="cam")
    p.add_argument("--grid-images", type=int, default=8, help="rows of the CAM grid")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-images", type=int, default=0, help="evaluate N images spread over the split (0 = all)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--cache-dir", default="", help="box index cache (default ROOT/.als_det_cache, or DIR's if read-only)")
    p.add_argument("--in-to-in9", default=None, metavar="JSON",
                   help="ImageNet-9 data: the challenge's in_to_in9.json, for models whose classes are not IN-9's")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    opts = EvalOptions(split=args.split, boxes=args.boxes, val_labels=args.val_labels, fill=args.fill,
                       min_crop_fraction=args.min_crop_fraction, batch_size=args.batch_size, workers=args.workers,
                       max_images=args.max_images, temperature_scaling=args.temperature_scaling, seed=args.seed,
                       cam_method=args.cam, grid_images=args.grid_images, device=args.device,
                       cache_dir=args.cache_dir)
    if is_in9_layout(args.data):
        unused = [f"--{k.replace('_', '-')}" for k in IN9_IGNORES if getattr(args, k) != p.get_default(k)]
        if unused:
            p.error(f"{' '.join(unused)} do(es) not apply to ImageNet-9 data ({args.data} has original/val)")
        metrics = evaluate_in9(args.checkpoint, args.data, args.out, names=args.name, in_to_in9=args.in_to_in9,
                               opts=opts, args=vars(args))
        if metrics is not None:
            print(f"wrote {args.out}/in9_metrics.json and {args.out}/in9_report.md ({metrics['wall_time_s']:.0f} s)")
            print("\n".join(summary_lines(metrics)))
        return
    if args.in_to_in9:
        p.error(f"--in-to-in9 applies to ImageNet-9 data; {args.data} has no original/val folder")
    metrics = evaluate_checkpoints(args.checkpoint, args.data, args.out, names=args.name, baseline=args.baseline,
                                   opts=opts, args=vars(args))
    if metrics is not None:
        print(f"wrote {args.out}/metrics.json and {args.out}/report.md ({metrics['wall_time_s']:.0f} s)")
        for comps in metrics["headline"]["comparisons"].values():
            if "bg_only" in comps:
                print(comps["bg_only"]["sentence"])


if __name__ == "__main__":
    main()
