"""Training loop (`trainer`), torchrun set-up (`distributed`) and checkpoints (`checkpoint`).

Import the submodules directly; `checkpoint` needs no data modules, so detection code can
`from als_det.engine.checkpoint import load_backbone` cheaply.
"""
