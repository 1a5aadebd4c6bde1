"""Packing a state_dict into one flat vector per dtype and back (the form weights travel in)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medfed.models.flat import pack, unpack

DTYPES = [torch.float32, torch.float64, torch.int64]


def test_pack_concatenates_in_state_dict_order_hand_computed() -> None:
    state = {
        "0.weight": torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
        "0.bias": torch.tensor([5.0]),
        "2.weight": torch.tensor([[6.0]]),
    }
    packed = pack(state)
    assert list(packed) == ["float32"]
    assert packed["float32"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    back = unpack(packed, state)
    assert list(back) == list(state)
    assert back["0.weight"].tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert back["2.weight"].shape == (1, 1)


def test_mixed_dtypes_travel_as_one_vector_per_dtype() -> None:
    state = {
        "a": torch.tensor([1.0, 2.0]),
        "steps": torch.tensor(7),
        "b": torch.tensor([3.0]),
        "c": torch.tensor([0.5], dtype=torch.float64),
    }
    packed = pack(state)
    assert list(packed) == ["float32", "int64", "float64"]
    assert packed["float32"].tolist() == [1.0, 2.0, 3.0]
    assert packed["int64"].tolist() == [7]
    back = unpack(packed, state)
    assert list(back) == ["a", "steps", "b", "c"]
    assert back["steps"].shape == () and back["steps"].dtype == torch.int64
    assert back["c"].dtype == torch.float64


def test_a_real_model_round_trips_and_loads() -> None:
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.LayerNorm(8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
    )
    packed = pack(model.state_dict())
    assert packed["float32"].numel() == sum(p.numel() for p in model.parameters())
    other = torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.LayerNorm(8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
    )
    other.load_state_dict(unpack(packed, other.state_dict()))
    x = torch.randn(4, 5)
    assert torch.equal(model(x), other(x))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(st.integers(0, 4), max_size=3), st.sampled_from(DTYPES)),
        min_size=1,
        max_size=6,
    ),
    st.integers(0, 2**31 - 1),
)
def test_unpack_inverts_pack_for_any_shapes(layers: list, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    state = {
        f"layer{i}": (torch.randn(shape, generator=generator) * 100).to(dtype)
        for i, (shape, dtype) in enumerate(layers)
    }
    packed = pack(state)
    assert all(v.dim() == 1 for v in packed.values())
    assert sum(v.numel() for v in packed.values()) == sum(t.numel() for t in state.values())
    back = unpack(packed, state)
    assert list(back) == list(state)
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
        assert torch.equal(back[name], tensor)


@pytest.mark.parametrize(
    ("flat", "phrase"),
    [
        ({"float32": torch.zeros(7)}, "vector of 6 values"),
        ({"float32": torch.zeros(5)}, "vector of 6 values"),
        ({"float32": torch.zeros(2, 3)}, "shape"),
        ({"float64": torch.zeros(6, dtype=torch.float64)}, "dtype groups"),
        ({"float32": torch.zeros(6), "int64": torch.zeros(1, dtype=torch.int64)}, "dtype groups"),
    ],
)
def test_unpack_refuses_another_layout(flat: dict, phrase: str) -> None:
    template = {"w": torch.zeros(2, 2), "b": torch.zeros(2)}
    with pytest.raises(ValueError, match=phrase):
        unpack(flat, template)
