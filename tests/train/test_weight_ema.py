"""`WeightEMA`: the averaged weights evaluated and shipped by `vqtok train`."""

import pytest
import torch
from torch import nn

from vqtok.errors import ConfigError
from vqtok.train.weight_ema import WeightEMA


def test_average_follows_the_parameters_and_is_applied_temporarily():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = WeightEMA(model, decay=0.5)
    ema.updates = 100  # past the warm-up: the plain decay applies
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update()
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), 0.5))
    with ema.applied():
        torch.testing.assert_close(model.weight.detach(), torch.full((1, 2), 0.5))
    torch.testing.assert_close(model.weight.detach(), torch.full((1, 2), 1.0))


def test_warm_up_forgets_the_start_and_state_round_trips():
    model = nn.Linear(3, 3)
    ema = WeightEMA(model, decay=0.999)
    ema.update()  # first update: effective decay 1/10
    first = {k: v.clone() for k, v in ema.shadow.items()}
    other = WeightEMA(model, decay=0.999)
    other.load(ema.state())
    assert other.updates == 1
    for k in first:
        assert torch.equal(other.shadow[k], first[k])
    with pytest.raises(ConfigError, match="decay"):
        WeightEMA(model, decay=1.0)
