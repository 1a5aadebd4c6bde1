"""A model's weights as one flat vector per dtype: the form they travel in.

Flower frames every array of a message separately (an Array object, an ArrayChunk with its own
``.npy`` header, an entry in the ArrayRecord: about 450 bytes per array per message), so sending a
state_dict layer by layer costs that overhead for every tensor. Both ends of a federation build
the same model, so the layout (names, shapes, order) never needs to travel: :func:`pack`
concatenates the state_dict in its own order, one vector per dtype, and :func:`unpack` cuts such
vectors back into a named state_dict shaped like a template. Every strategy here works
elementwise or on flattened vectors, so aggregating the packed form is aggregating the model.
No Flower here.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def _groups(state: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """The state_dict's names grouped by dtype name, in order of first appearance."""
    groups: dict[str, list[str]] = {}
    for name, tensor in state.items():
        groups.setdefault(str(tensor.dtype).removeprefix("torch."), []).append(name)
    return groups


def pack(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One 1-d tensor per dtype (key: the dtype's name, e.g. ``"float32"``) holding every tensor
    of ``state`` of that dtype, flattened and concatenated in ``state``'s order."""
    return {
        dtype: torch.cat([state[name].detach().reshape(-1) for name in names])
        for dtype, names in _groups(state).items()
    }


def unpack(
    flat: Mapping[str, torch.Tensor], template: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The named state_dict that ``pack`` of a state shaped like ``template`` came from.

    Raises ``ValueError`` when ``flat`` does not have the template's packed layout (other dtype
    groups, or a vector of another length).
    """
    groups = _groups(template)
    if list(flat) != list(groups):
        raise ValueError(
            f"the packed weights hold the dtype groups {list(flat)}; the model's are {list(groups)}"
        )
    state: dict[str, torch.Tensor] = {}
    for dtype, names in groups.items():
        vector = flat[dtype]
        sizes = [template[name].numel() for name in names]
        if vector.dim() != 1 or vector.numel() != sum(sizes):
            raise ValueError(
                f"the packed {dtype} weights have shape {tuple(vector.shape)}; the "
                f"model needs a vector of {sum(sizes)} values"
            )
        for name, part in zip(names, torch.split(vector, sizes), strict=True):
            state[name] = part.reshape(template[name].shape).to(template[name].dtype)
    return {name: state[name] for name in template}
