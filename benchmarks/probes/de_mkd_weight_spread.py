"""DE-MKD entropy weights of the three shipped resnet20 teachers on the mini test set: T=1 vs T=tau=4."""
import tempfile

import torch

from mkdlab.data import make_loaders
from mkdlab.losses.weightings import de_mkd_weights
from mkdlab.teachers import SHIPPED_TEACHERS, TeacherPool

pool = TeacherPool(tempfile.mkdtemp(), shipped=SHIPPED_TEACHERS)
models = [pool.load(f"resnet20-fashion_mnist_mini-s{s}-e8").eval() for s in (0, 1, 2)]
_, test = make_loaders("fashion_mnist_mini", 500, device=torch.device("cpu"))
logits, labels = [], []
with torch.no_grad():
    for batch in test:
        images, y = batch[0], batch[1]
        logits.append(torch.stack([m(images) for m in models]))
        labels.append(y)
z, y = torch.cat(logits, 1), torch.cat(labels)
right = z.argmax(2) == y[None]  # K×B
print(f"teachers top1 {[round(100 * r.float().mean().item(), 2) for r in right]}, n={y.numel()}")
for t in (1.0, 4.0):
    w = de_mkd_weights(z, "literal", t)  # B×K, rows sum K-1
    n = w / w.sum(1, keepdim=True)  # normalised to sum 1 (what the extras log)
    wt = n.T
    spread = (n.max(1).values - n.min(1).values)
    mixed = right.any(0) & ~right.all(0)
    print(f"T={t}: row sum {w.sum(1).mean():.4f}; normalised weights: per-sample std over teachers "
          f"{n.std(1).mean():.4f}, mean max-min {spread.mean():.4f}, max max-min {spread.max():.4f}; "
          f"mean weight right {wt[right].mean():.4f} wrong {wt[~right].mean():.4f}; on the {int(mixed.sum())} "
          f"samples where teachers disagree: right {wt[:, mixed][right[:, mixed]].mean():.4f} "
          f"wrong {wt[:, mixed][~right[:, mixed]].mean():.4f}")
