"""Where a model process goes, decided from GPUs as NVML describes them (here: the figures of an
8-GPU H100 host part-used), and what a refused launch is told. The end-to-end run on a real GPU
is `benchmarks/gpu_placement.py` on the GPU machine."""

from __future__ import annotations

import pytest

from inferd.errors import InvalidRequest
from inferd.runtime.gpus import GPU, GiB, Need, Placement, estimate

H100 = 80 * GiB


def gpus(*free_gib: float) -> list[GPU]:
    return [GPU(i, "NVIDIA H100", H100, int(f * GiB)) for i, f in enumerate(free_gib)]


def test_the_emptiest_gpu_nobody_holds_comes_first() -> None:
    here = gpus(70, 79, 79, 20)
    held = {"qwen/0": [1]}
    assert Placement(held).place(estimate(16 * GiB, 1), None, here) == [2]
    assert Placement({}).place(estimate(16 * GiB, 2), None, here) == [1, 2]


def test_named_gpus_are_used_as_named_or_refused() -> None:
    here = gpus(79, 79)
    assert Placement({}).place(estimate(GiB, 1), [1], here) == [1]
    with pytest.raises(InvalidRequest) as refused:
        Placement({}).place(estimate(GiB, 1), [3], here)
    assert refused.value.param == "gpu_idx" and "no GPU 3" in refused.value.message


def test_a_model_that_cannot_fit_is_told_what_would() -> None:
    here = gpus(10, 30)
    with pytest.raises(InvalidRequest) as refused:
        Placement({"big/0": [0]}).place(estimate(40 * GiB, 1), None, here)
    message = refused.value.message
    assert "GPU 0 (NVIDIA H100, 10.0 GiB free of 80.0 GiB), held by big/0" in message
    assert "n_gpu=0" in message and refused.value.param == "n_gpu"


def test_vllm_takes_its_share_of_the_whole_gpu() -> None:
    here = gpus(40, 79)
    share = Need(1, None, 0.9, "0.90 of each GPU (gpu_memory_utilization)")
    assert Placement({}).place(share, None, here) == [1]
    with pytest.raises(InvalidRequest) as refused:
        Placement({}).place(share, [0], here)
    assert refused.value.param == "gpu_memory_utilization"
    assert "gpu_memory_utilization=0.50 would fit on GPU 0" in refused.value.message


def test_more_gpus_than_the_machine_has() -> None:
    with pytest.raises(InvalidRequest) as refused:
        Placement({}).place(estimate(GiB, 4), None, gpus(79, 79))
    assert "asks for 4 GPUs and this machine has 2" in refused.value.message
    assert refused.value.param == "n_gpu"


def test_vllm_parallel_sizes_are_the_gpus_it_asks_for() -> None:
    from inferd.engines.vllm import VLLMEngine

    assert VLLMEngine.gpus_asked({}) is None
    assert VLLMEngine.gpus_asked({"tensor_parallel_size": 2}) == (2, "tensor_parallel_size")
    assert VLLMEngine.gpus_asked({"tensor_parallel_size": "2", "pipeline_parallel_size": 2}) == (
        4,
        "tensor_parallel_size",
    )
    for bad in ({"tensor_parallel_size": 0}, {"pipeline_parallel_size": "two"}):
        with pytest.raises(InvalidRequest) as refused:
            VLLMEngine.gpus_asked(bad)
        assert refused.value.param == next(iter(bad))
    # Tensor parallel over more GPUs than the machine has names the option that asked.
    with pytest.raises(InvalidRequest) as refused:
        Placement({}).place(
            estimate(GiB, 4), None, gpus(79, 79), count_param="tensor_parallel_size"
        )
    assert refused.value.param == "tensor_parallel_size"
    assert "tensor_parallel_size=4 asks for 4 GPUs and this machine has 2" in refused.value.message
