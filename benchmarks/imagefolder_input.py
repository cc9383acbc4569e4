"""ImageFolder input paths side by side: training images/s delivered to the device, normalised, no model.

    PYTHONPATH=. python benchmarks/imagefolder_input.py                  # 512 JPEGs of 320x256 -> 224 px
    PYTHONPATH=. python benchmarks/imagefolder_input.py --workers 8 --images 2048   # a GPU box

  float    timm's transforms to float32 in the loader workers (ToTensor + Normalize), copied to the device:
           `data.on_device: false`
  uint8    timm's prefetcher convention (`create_transform(use_prefetcher=True)`): the workers decode and
           augment to uint8, a quarter of the bytes are copied (pinned), float and normalise run on the
           device: ablate's default (`data.on_device: true`)
  nvjpeg   the workers only read the files; `torchvision.io.decode_jpeg(batch, device=...)` decodes the batch
           on the device (nvJPEG on CUDA), then a random resized crop + flip per image there, stack, normalise

Each path runs ablate's ImageFolderDataModule loaders where it can (float, uint8) and the same sampler and
worker count otherwise; the first pass over the data warms the page cache and the workers and is not timed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from ablate.config import ImageFolderData  # noqa: E402
from ablate.data import build_datamodule  # noqa: E402


def write_jpegs(root: Path, n: int, classes: int = 4) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for i in range(n if split == "train" else classes):
            folder = root / split / f"c{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            # smooth noise, so the JPEGs are photo-sized (~20 KB) rather than incompressible
            small = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
            Image.fromarray(small).resize((320, 256), Image.BICUBIC).save(folder / f"{i}.jpg", quality=90)


class JpegBytes(Dataset):
    """The files' bytes only: decoding waits for the device."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return Path(path).read_bytes(), label  # bytes pickle through the pipe (a tensor each: one fd each)


def nvjpeg_batches(dm, size: int, device: torch.device, workers: int):
    data = dm.train_set.dataset if hasattr(dm.train_set, "dataset") else dm.train_set
    def collate(batch):
        files = [torch.frombuffer(bytearray(x), dtype=torch.uint8) for x, _ in batch]
        return files, torch.tensor([y for _, y in batch])

    loader = DataLoader(JpegBytes(data.samples), batch_size=dm.cfg.batch_size, shuffle=True, drop_last=True,
                        num_workers=workers, collate_fn=collate)
    crop = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])
    mean = (dm.mean * 255).to(device)[:, None, None]
    std = (dm.std * 255).to(device)[:, None, None]
    for files, y in loader:
        images = torchvision.io.decode_jpeg(files, device=device.type if device.type == "cpu" else device)
        x = torch.stack([crop(im) for im in images])
        yield x.float().sub_(mean).div_(std), y.to(device, non_blocking=True)


def module_batches(dm, device: torch.device):
    for batch in dm.train_dataloader():
        x, y = (t.to(device, non_blocking=True) for t in batch)
        yield dm.transform_batch((x, y), train=True)


def rate(batches, device: torch.device) -> float:
    n, start = 0, None
    for i, (x, _) in enumerate(batches):
        if i == 0:  # after the first batch: workers started, files cached
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            continue
        n += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--root", help="an existing ImageFolder root (default: a temporary folder of JPEGs)")
    args = parser.parse_args()
    device = torch.device(args.device)
    tmp = tempfile.TemporaryDirectory(prefix="ablate-imagefolder-")
    root = Path(args.root) if args.root else Path(tmp.name)
    if not args.root:
        write_jpegs(root, args.images)

    def datamodule(on_device: bool):
        return build_datamodule(ImageFolderData(root=str(root), image_size=args.size, batch_size=args.batch_size,
                                                num_workers=args.workers, on_device=on_device))

    rows = []
    for name, make in (("float", lambda: module_batches(datamodule(False), device)),
                       ("uint8", lambda: module_batches(datamodule(True), device)),
                       ("nvjpeg", lambda: nvjpeg_batches(datamodule(True), args.size, device, args.workers))):
        for _ in make():  # warm-up pass: page cache
            pass
        rows.append({"path": name, "img/s": rate(make(), device)})
    table = pd.DataFrame(rows)
    table["vs float"] = table["img/s"] / table.loc[0, "img/s"]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\nImageFolder training input to {where}: {args.images} JPEGs -> {args.size} px, batch "
          f"{args.batch_size}, {args.workers} loader workers, torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}\n")
    print(table.to_string(index=False, formatters={"img/s": "{:,.0f}".format, "vs float": "{:.2f}".format}))


if __name__ == "__main__":
    main()
