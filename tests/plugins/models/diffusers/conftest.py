"""The diffusers tests run torch on one thread: their models are tiny, and two threads on a busy machine
spend most of their time waiting for each other (tens of times slower), which says nothing about mwga."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
