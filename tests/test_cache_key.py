"""s5ssm.cache_key.CacheKey: each change its docstring lists makes the key stale, and
nothing else does."""

import copy
import gc
import weakref

import pytest
import torch
from torch import nn

from s5ssm.cache_key import CacheKey


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.norm = nn.BatchNorm1d(2)
        self.scale = 1.5


def fresh(values=False):
    net = Net().eval()
    return net, CacheKey(net, [(net, "scale"), (net.lin, "in_features")], values=values)


CHANGES = {
    "new parameter": lambda net: setattr(net.lin, "weight", nn.Parameter(net.lin.weight.detach().clone())),
    "new submodule": lambda net: setattr(net, "norm", nn.BatchNorm1d(2).eval()),
    "submodule removed": lambda net: setattr(net, "norm", None),
    "new storage (.data =)": lambda net: setattr(net.lin.bias, "data", net.lin.bias.detach().clone()),
    "dtype": lambda net: net.double(),
    "buffer storage": lambda net: setattr(net.norm.running_mean, "data", torch.ones(2)),
    "train()": lambda net: net.norm.train(),
    "option": lambda net: setattr(net, "scale", 2.0),
}


@pytest.mark.parametrize("change", CHANGES)
def test_stale_after(change):
    net, key = fresh()
    assert key.current()
    CHANGES[change](net)
    assert not key.current()


def test_versions_only_with_values():
    for values in (False, True):
        net, key = fresh(values)
        with torch.no_grad():
            net.lin.weight.mul_(2)  # in place: same tensor and storage, version + 1
        assert key.current() is not values
        net, key = fresh(values)
        net.load_state_dict(net.state_dict())
        assert key.current() is not values


def test_unchanged_after_eval_round_trip_and_reads():
    net, key = fresh(values=True)
    net.train()
    net.eval()
    with torch.no_grad():
        net.norm(net.lin(torch.randn(4, 3)))  # eval: reads parameters and running statistics only
    assert key.current()


def test_inference_tensors_are_never_current_with_values():
    with torch.inference_mode():
        net = Net().eval()
    assert CacheKey(net).current()  # storage and slots are still compared
    assert not CacheKey(net, values=True).current()


def test_deep_copy_is_never_current_and_the_module_is_held_weakly():
    net, key = fresh(values=True)
    net.cache = key  # a cache stored on the module, as S5SSM keeps its step operator
    twin = copy.deepcopy(net)
    assert key.current() and not twin.cache.current()
    alive = weakref.ref(net)
    del net
    gc.collect()
    assert alive() is None
