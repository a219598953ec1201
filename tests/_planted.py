"""A dense MLP whose *weights* (not architecture) are modular, and the task it solves.

Branch a (hidden units 0-31) reads x[:, :8] and writes out[:, :2] = subroutine A; branch b
(units 32-63) reads x[:, 8:] and writes out[:, 2:] = subroutine B; the composite task answers
both (scored on both right, like the two-relation task families). The layers are dense
``nn.Linear``s, so a random re-initialisation of the same architecture is not modular.
"""
import torch
from torch import nn

from modprobe.subroutine import Subroutine
from modprobe.tasks import Constituents, Split, Task, both_correct, relation_loss


class Dense(nn.Module):
    def __init__(self, hidden: int = 64):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 4)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def labels(x):
    return (x[:, 0] * x[:, 1] + x[:, 2] > 0).long(), (x[:, 8] + x[:, 9] * x[:, 10] > 0).long()


def read_a(out):
    return out[:, :2]


def read_b(out):
    return out[:, 2:]


def _blocks(hidden: int) -> dict[str, torch.Tensor]:
    h = hidden // 2
    m1 = torch.zeros(hidden, 16); m1[:h, :8] = 1; m1[h:, 8:] = 1
    m2 = torch.zeros(hidden, hidden); m2[:h, :h] = 1; m2[h:, h:] = 1
    m3 = torch.zeros(4, hidden); m3[:2, :h] = 1; m3[2:, h:] = 1
    return {"fc1": m1, "fc2": m2, "fc3": m3}


def planted_model(seed: int = 0, steps: int = 400) -> Dense:
    """Train Dense with block-diagonal weight constraints on A and B, then bake the blocks in."""
    torch.manual_seed(seed)
    model = Dense()
    blocks = _blocks(64)
    with torch.no_grad():
        for name, m in blocks.items():
            getattr(model, name).weight.mul_(m)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(256, 16, generator=g)
        ya, yb = labels(x)
        out = model(x)
        loss = nn.functional.cross_entropy(out[:, :2], ya) + nn.functional.cross_entropy(out[:, 2:], yb)
        opt.zero_grad()
        loss.backward()
        for name, m in blocks.items():
            getattr(model, name).weight.grad.mul_(m)
        opt.step()
    return model.eval()


def planted_task(n_train: int = 768, n_test: int = 384, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)

    def draw(n):
        x = torch.randn(n, 16, generator=g)
        return (x, *labels(x))

    xs, (xt, yat, ybt), (xc, yac, ybc) = draw(n_train), draw(n_test), draw(n_test)
    x, ya, yb = xs

    def split(readout, y_train, y_test, **scoring):
        scoring = {"chance": 0.5, **scoring}
        return Split(Subroutine((x, y_train), readout=readout, **scoring),
                     Subroutine((xt, y_test), readout=readout, **scoring))

    # the composite answers both subroutines (both right), as the two-relation tasks do
    composite = split(None, 2 * ya + yb, 2 * yat + ybt, loss=relation_loss, metric=both_correct,
                      chance=0.25)
    return Task(name="planted", composite=composite,
                subroutines={"A": split(read_a, ya, yat), "B": split(read_b, yb, ybt)},
                constituents=Constituents(xc, {"A": yac, "B": ybc}), heldout=None,
                heldout_constituents=None, n_classes=4, input_kind="vector",
                options={"seed": seed, "n_train": n_train, "n_test": n_test})
