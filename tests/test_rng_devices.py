"""Generator states in checkpoints restore on a machine with another number of visible GPUs, another device
index, or across CPU and GPU: the stream the current device draws from continues.

No GPU here, so the lists are faked where ppti calls Paddle (`paddle.get_device`, `paddle.get_rng_state`,
`paddle.set_rng_state`); the states in them are real Paddle GeneratorState objects."""

from __future__ import annotations

import json

import paddle
import pytest

from ppti import checkpoint


def _state(seed: int):
    """A real GeneratorState, distinguishable by its seed."""
    real = paddle.get_rng_state("cpu")[0]
    device, _, offset, mt = real.__getstate__()
    state = type(real).__new__(type(real))
    state.__setstate__((device, seed, offset, mt))
    return state


def _seed(state) -> int:
    return state.__getstate__()[1]


class FakeGpus:
    """`count` visible GPUs whose generators hold seeds 100, 101, ...; this process on gpu:`index` (or the CPU)."""

    def __init__(self, monkeypatch, count: int, index: int | None):
        self.states = [_state(100 + i) for i in range(count)]
        self.device = "cpu" if index is None else f"gpu:{index}"
        self.set_calls: list[list[int]] = []
        real_get, real_set = paddle.get_rng_state, paddle.set_rng_state

        def get_rng_state(device=None):
            return real_get("cpu") if device == "cpu" else list(self.states)

        def set_rng_state(states, device=None):
            if device == "cpu":
                return real_set(states, "cpu")
            if len(states) != len(self.states):  # what Paddle does on a count mismatch
                raise ValueError("Length of gpu state list should be equal to the gpu device count")
            self.set_calls.append([_seed(s) for s in states])
            self.states = list(states)

        monkeypatch.setattr(paddle, "get_device", lambda: self.device)
        monkeypatch.setattr(paddle, "get_rng_state", get_rng_state)
        monkeypatch.setattr(paddle, "set_rng_state", set_rng_state)


def _saved(monkeypatch, count: int, index: int | None) -> dict:
    with monkeypatch.context() as patch:
        FakeGpus(patch, count, index)
        return json.loads(json.dumps(checkpoint.rng_states()))  # through JSON, as on disk


@pytest.mark.parametrize("saved_gpus, saved_index, gpus, index", [
    (8, 5, 2, 1),  # a node with 8 GPUs -> an allocation with 2
    (2, 1, 8, 6),  # and back: more GPUs, another index
    (1, 0, 4, 3),
])
def test_the_current_gpus_stream_continues_on_another_gpu_count_and_index(monkeypatch, saved_gpus, saved_index,
                                                                         gpus, index):
    saved = _saved(monkeypatch, saved_gpus, saved_index)
    assert saved["paddle"]["current_device"][1] == 100 + saved_index  # only that one generator
    fake = FakeGpus(monkeypatch, gpus, index)
    checkpoint.set_rng_states(saved)
    expected = [100 + i for i in range(gpus)]
    expected[index] = 100 + saved_index  # this process's generator continues the saved stream; others untouched
    assert fake.set_calls == [expected]


def test_gpu_checkpoint_resumes_on_cpu_and_cpu_checkpoint_on_gpu(monkeypatch, caplog):
    caplog.set_level("INFO", logger="ppti")
    gpu_saved = _saved(monkeypatch, 4, 2)
    expected = paddle.rand([3]).numpy().tolist()  # (the CPU stream right after the save)
    paddle.seed(99)
    with monkeypatch.context() as patch:
        cpu = FakeGpus(patch, 0, None)
        checkpoint.set_rng_states(gpu_saved)  # GPU -> CPU: the CPU generator continues
        assert cpu.set_calls == []
    assert paddle.rand([3]).numpy().tolist() == expected
    assert "written on gpu:2, this run is on the CPU" in caplog.text

    cpu_saved = _saved(monkeypatch, 0, None)
    assert "current_device" not in cpu_saved["paddle"]
    gpus = FakeGpus(monkeypatch, 2, 1)
    checkpoint.set_rng_states(cpu_saved)  # CPU -> GPU: nothing to continue, no error
    assert gpus.set_calls == [] and "written on the CPU, this run is on gpu:1" in caplog.text


def test_checkpoints_of_the_old_format_with_every_gpus_state_still_restore(monkeypatch):
    saved = _saved(monkeypatch, 4, 3)
    del saved["paddle"]["current_device"]
    saved["paddle"]["device"] = [checkpoint._generator_state(_state(200 + i)) for i in range(4)]  # old: the list
    fake = FakeGpus(monkeypatch, 2, 0)
    checkpoint.set_rng_states(saved)
    assert fake.set_calls == [[203, 101]]
