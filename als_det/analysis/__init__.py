"""Context-only variants, class activation maps, the evaluation run and ImageNet-9 (no detectron2).

Analysis computes; the statistics live in `als_det.metrics`, the words, tables and figures in
`als_det.report`.
"""
