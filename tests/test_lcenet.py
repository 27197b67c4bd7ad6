import pytest
import torch
from torch import nn

from lcenet import LCENet, LCENetWrapped, with_lcenet
from lcenet.config import CORNET, LCENetSettings
from lcenet.errors import UserError


def test_shapes_and_parameter_count():
    net = LCENet(num_labels=50, rank=8, blocks=3)
    z = torch.randn(4, 50)
    assert net(z).shape == (4, 50)
    assert LCENet.parameters_per_block(50, 8) == 2 * 8 * 50 + 8 + 50
    assert net.num_parameters() == 3 * LCENet.parameters_per_block(50, 8)
    assert len(net.blocks) == 3


def test_rank_is_capped_at_num_labels():
    net = LCENet(num_labels=20)  # default rank 1000 > L
    assert net.config["rank"] == 20
    assert net.num_parameters() == 2 * LCENet.parameters_per_block(20, 20)


def test_full_rank_parameter_count_and_memory_refusal():
    net = LCENet(num_labels=30, blocks=1, bottleneck=False)
    assert net.num_parameters() == 30 * 30 + 30 == LCENet.parameters_per_block(30, 1, bottleneck=False)
    with pytest.raises(UserError, match="bottleneck"):
        LCENet(num_labels=500_000, bottleneck=False)


def test_identity_init_is_the_identity_map():
    net = LCENet(num_labels=40, rank=16, blocks=2, init="identity")
    z = torch.randn(5, 40)
    assert torch.equal(net(z), z)


def test_the_defaults_start_as_the_identity_map_and_cornets_setting_does_not():
    z = torch.randn(5, 40)
    assert torch.equal(LCENet(num_labels=40)(z), z)
    assert torch.equal(LCENet(num_labels=40, **LCENetSettings().kwargs())(z), z)
    assert not torch.allclose(LCENet(num_labels=40, **CORNET.kwargs())(z), z)


def test_xavier_init_changes_logits():
    torch.manual_seed(0)
    net = LCENet(num_labels=40, rank=16, init="xavier")
    z = torch.randn(5, 40)
    assert not torch.allclose(net(z), z)


def test_residual_switch():
    torch.manual_seed(0)
    z = torch.randn(3, 12)
    with_residual = LCENet(12, rank=4, blocks=1, residual=True)
    without = LCENet(12, rank=4, blocks=1, residual=False)
    without.load_state_dict(with_residual.state_dict())
    assert torch.allclose(with_residual(z), z + without(z), atol=1e-6)


def test_activation_switches_do_what_they_say():
    torch.manual_seed(0)
    z = torch.randn(3, 12)
    net = LCENet(12, rank=4, blocks=1, input_activation="none", hidden_activation="none", residual=False)
    block = net.blocks[0]
    expected = block.up(block.down(z))  # purely linear without activations
    assert torch.allclose(net(z), expected, atol=1e-6)
    sig = LCENet(12, rank=4, blocks=1, input_activation="sigmoid", hidden_activation="elu", residual=False)
    sig.load_state_dict(net.state_dict())
    b = sig.blocks[0]
    assert torch.allclose(sig(z), b.up(nn.functional.elu(b.down(torch.sigmoid(z)))), atol=1e-6)
    for name in ("tanh", "none", "sigmoid"):
        LCENet(12, rank=4, input_activation=name)
    for name in ("elu", "relu", "gelu", "none"):
        LCENet(12, rank=4, hidden_activation=name)


def test_no_bottleneck_is_one_full_rank_linear():
    net = LCENet(10, blocks=1, bottleneck=False, residual=False, input_activation="none")
    block = net.blocks[0]
    assert block.down is None and block.up.weight.shape == (10, 10)
    z = torch.randn(2, 10)
    assert torch.allclose(net(z), block.up(z))


@pytest.mark.parametrize("kwargs", [{"input_activation": "softmax"}, {"hidden_activation": "swish"},
                                    {"init": "orthogonal"}, {"rank": 0}, {"aux_loss_weight": -1.0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(UserError):
        LCENet(10, **kwargs)


def test_with_lcenet_on_a_foreign_model_and_gradients_reach_it():
    base = nn.Sequential(nn.Linear(7, 16), nn.ReLU(), nn.Linear(16, 25))  # returns logits, knows nothing of us
    model = with_lcenet(base, 25, rank=5, blocks=2)
    assert isinstance(model, LCENetWrapped)
    x = torch.randn(3, 7)
    out = model(x)
    assert out.shape == (3, 25)
    assert torch.allclose(out, model.lcenet(base(x)))
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in base.parameters())


def test_wrapping_passes_keyword_arguments():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 6)

        def forward(self, input_ids, attention_mask):
            return self.linear(input_ids * attention_mask)

    model = with_lcenet(TwoInputs(), 6, rank=2)
    x = torch.randn(2, 4)
    assert model(x, attention_mask=torch.ones(2, 4)).shape == (2, 6)
