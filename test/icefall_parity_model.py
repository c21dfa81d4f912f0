"""The model of the recorded optimizer run, shared by its recorder and its test."""
import torch


class TinyModel(torch.nn.Module):
    """Three Linear layers, a per-channel gain used on even steps only (a parameter without a
    gradient every other step), and both kinds of scalar parameter (0-dim and (1,)): the
    optimizer run of the icefall parity fixtures (recorded with icefall's ScaledAdam + Eden by
    tools/record_icefall_reference.py, replayed with ours by test_icefall_parity.py)."""

    def __init__(self, c):
        super().__init__()
        self.lin1 = torch.nn.Linear(c["in_dim"], c["hidden"])
        self.lin2 = torch.nn.Linear(c["hidden"], c["hidden"])
        self.out = torch.nn.Linear(c["hidden"], c["out_dim"])
        self.gain = torch.nn.Parameter(torch.tensor(0.7))
        self.offset = torch.nn.Parameter(torch.tensor([0.1]))
        self.extra = torch.nn.Parameter(torch.full((c["hidden"],), 0.3))

    def forward(self, x, step):
        h = torch.tanh(self.lin1(x))
        if step % 2 == 0:
            h = h * (1.0 + self.extra)
        h = torch.tanh(self.lin2(h))
        return self.out(h) * self.gain + self.offset

    def param_groups(self, group1_lr):
        named = dict(self.named_parameters())
        g0 = [(n, named[n]) for n in ("lin1.weight", "lin1.bias", "lin2.weight", "lin2.bias", "extra")]
        g1 = [(n, named[n]) for n in ("out.weight", "out.bias", "gain", "offset")]
        return [{"named_params": g0}, {"named_params": g1, "lr": group1_lr}]
