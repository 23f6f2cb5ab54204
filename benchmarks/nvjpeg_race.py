"""Does a CUDA JPEG decode write into memory that work queued on the caller's stream still reads?

pytorch/vision#9606: nvJPEG's hardware decoder writes its outputs before the caller's queued work
has run, into blocks PyTorch's caching allocator recycled from that work. Each round fills blocks
with ones, queues a long kernel and then one sum per block, frees the blocks, decodes a batch, and
counts the sums that came out wrong: for torchvision's `decode_jpeg` as it is, and for als_det's
`DATA.DECODE device` decode (which waits for the caller's stream first). Needs a CUDA GPU.

    python benchmarks/nvjpeg_race.py [--rounds 50]
"""

from __future__ import annotations

import argparse
import json

import torch
from torchvision.io import decode_jpeg, encode_jpeg

from als_det.data.device_decode import _decode_jpeg


def corrupted_sums(decode, rounds: int, batch: int = 16, side: int = 64) -> int:
    device = torch.device("cuda")
    jpeg = encode_jpeg(torch.randint(0, 256, (3, side, side), dtype=torch.uint8))
    n = 3 * side * side
    bad = 0
    for _ in range(rounds):
        blocks = [torch.ones(n, dtype=torch.uint8, device=device) for _ in range(batch)]
        torch.cuda.synchronize()
        torch.cuda._sleep(20_000_000)
        sums = [b.sum(dtype=torch.int64) for b in blocks]
        del blocks
        decode([jpeg] * batch)
        torch.cuda.synchronize()
        bad += sum(int(s) != n for s in sums)
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("nvjpeg_race.py: needs a CUDA GPU (nvJPEG); none is visible here")
    device = torch.device("cuda")
    sums = args.rounds * 16
    result = {
        "gpu": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "sums": sums,
        "torchvision_decode_jpeg_corrupted": corrupted_sums(
            lambda d: decode_jpeg(d, device=device), args.rounds
        ),
        "als_det_decode_corrupted": corrupted_sums(lambda d: _decode_jpeg(d, device), args.rounds),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
