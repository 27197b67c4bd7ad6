import pytest
import torch

from lcenet.weight_average import WeightAverage


def model_with(weight: float) -> torch.nn.Module:
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(weight)
    model.register_buffer("order", torch.tensor([2, 0, 1]))  # a buffer: not averaged
    return model


def test_the_average_follows_the_weights_with_the_stated_decay():
    model = model_with(0.0)
    average = WeightAverage(model, decay=0.5)
    for weight in (4.0, 8.0):
        with torch.no_grad():
            model.weight.fill_(weight)
        average.update()
    # a_0 = 0; a_1 = 0.5·0 + 0.5·4 = 2; a_2 = 0.5·2 + 0.5·8 = 5
    assert average.state_dict() == {"weight": pytest.approx(torch.tensor([[5.0]]))}
    assert set(average.state_dict()) == {"weight"}


def test_frozen_parameters_are_not_averaged():
    model = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1))
    model[0].requires_grad_(False)
    assert set(WeightAverage(model, decay=0.9).state_dict()) == {"1.weight", "1.bias"}


def test_applied_lends_the_model_the_average_and_gives_its_weights_back_even_on_error():
    model = model_with(1.0)
    average = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(3.0)
    with pytest.raises(RuntimeError), average.applied():
        assert model.weight.item() == 1.0
        raise RuntimeError
    assert model.weight.item() == 3.0
    average.copy_to_model()
    assert model.weight.item() == 1.0


def test_state_round_trips_and_a_missing_average_is_named():
    source, target = WeightAverage(model_with(7.0), 0.9), WeightAverage(model_with(0.0), 0.9)
    target.load_state_dict(source.state_dict())
    assert target.state_dict()["weight"].item() == 7.0
    with pytest.raises(KeyError, match="weight"):
        target.load_state_dict({})
    with pytest.raises(ValueError):
        WeightAverage(model_with(0.0), decay=1.0)
