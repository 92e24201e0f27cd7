"""Direct launches: a kernel's first launch of each argument signature goes through Triton,
later ones start the compiled kernel with every parameter in order; anything Triton
specializes on (integer values, tensor dtype and alignment, constants) picks another entry."""
import inspect
from types import SimpleNamespace

import pytest
import torch

from spattn_dsl.runtime import direct


class FakeCompiled:
    """A compiled kernel: its launcher ``run`` and its runner ``compiled[grid]``."""
    function, packed_metadata = object(), object()

    def __init__(self, calls):
        self.calls = calls

    def run(self, *args):
        grid, (stream, function, metadata, launch_metadata, enter, exit_) = args[:3], args[3:9]
        assert (stream, function, metadata) == (7, self.function, self.packed_metadata)
        assert launch_metadata is enter is exit_ is None
        self.calls.append(("direct", grid, args[9:]))

    def __getitem__(self, grid):
        return lambda *args: self.calls.append(("runner", grid, args))


class FakeKernel:
    """Stands in for a JITFunction ``f(x, n, scale, BLOCK: constexpr, EVEN: constexpr = True)``."""

    def __init__(self, compiled=True, hooks=(), runtime_default=False):
        self.calls = []
        self.compiled = compiled
        self.pre_run_hooks = list(hooks)
        names = [("x", False), ("n", False), ("scale", False), ("BLOCK", True), ("EVEN", True)]
        self.params = [SimpleNamespace(name=name, is_constexpr=const, has_default=name == "EVEN",
                                       default=True if name == "EVEN" else inspect.Parameter.empty)
                       for name, const in names]
        if runtime_default:
            self.params.append(SimpleNamespace(name="extra", is_constexpr=False, has_default=True,
                                               default=0))

    def __getitem__(self, grid):
        def run(*args, **constants):
            self.calls.append(("triton", grid, args, constants))
            return FakeCompiled(self.calls) if self.compiled else None
        return run


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, request):
    monkeypatch.setattr(direct, "_compiled", {})
    monkeypatch.setattr(direct, "_direct", {})
    monkeypatch.delenv("SPATTN_DIRECT_LAUNCH", raising=False)
    if request.node.get_closest_marker("gpu") is None:  # real kernels need the real device
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)  # and stream (7 segfaults)
        monkeypatch.setattr(direct, "_stream", lambda device: 7)  # the fake kernels' stream


def paths(kernel):
    return [call[0] for call in kernel.calls]


def test_the_second_launch_of_a_signature_is_direct_with_every_parameter():
    kernel, x = FakeKernel(), torch.zeros(8)
    direct.launch(kernel, (4,), x, 64, 0.5, BLOCK=16)
    direct.launch(kernel, (4, 2), x, 64, 0.25, BLOCK=16)
    assert paths(kernel) == ["triton", "direct"]
    assert kernel.calls[1] == ("direct", (4, 2, 1), (x, 64, 0.25, 16, True))


def test_launch_hooks_keep_the_compiled_kernels_runner(monkeypatch):
    from triton import knobs
    kernel, x = FakeKernel(), torch.zeros(8)
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", print)
    direct.launch(kernel, (4,), x, 64, 0.5, BLOCK=16)
    direct.launch(kernel, (4,), x, 64, 0.5, BLOCK=16)
    assert kernel.calls[1] == ("runner", (4, 1, 1), (x, 64, 0.5, 16, True))


@pytest.mark.parametrize("change", ["int", "alignment", "dtype", "constant", "none", "type"])
def test_whatever_triton_specializes_on_takes_its_path_again(change):
    kernel, x = FakeKernel(), torch.zeros(16)
    first = dict(args=(x, 64, 0.5), constants=dict(BLOCK=16))
    other = {"int": dict(args=(x, 65, 0.5), constants=dict(BLOCK=16)),
             "alignment": dict(args=(x[1:], 64, 0.5), constants=dict(BLOCK=16)),
             "dtype": dict(args=(x.half(), 64, 0.5), constants=dict(BLOCK=16)),
             "constant": dict(args=(x, 64, 0.5), constants=dict(BLOCK=32)),
             "none": dict(args=(None, 64, 0.5), constants=dict(BLOCK=16)),
             "type": dict(args=(x, 64, 1), constants=dict(BLOCK=16))}[change]
    for call in (first, first, other, other):
        direct.launch(kernel, (1,), *call["args"], **call["constants"])
    assert paths(kernel) == ["triton", "direct", "triton", "direct"]


@pytest.mark.parametrize("kernel", [FakeKernel(compiled=False), FakeKernel(hooks=[print]),
                                    FakeKernel(runtime_default=True)],
                         ids=["interpreter", "pre-run hooks", "runtime default"])
def test_kernels_that_cannot_go_direct_always_take_tritons_path(kernel):
    for _ in range(3):
        direct.launch(kernel, (1,), torch.zeros(4), 8, 1.0, BLOCK=16)
    assert paths(kernel) == ["triton"] * 3


def test_the_environment_switch_turns_direct_launches_off(monkeypatch):
    kernel, x = FakeKernel(), torch.zeros(4)
    direct.launch(kernel, (1,), x, 8, 1.0, BLOCK=16)
    monkeypatch.setenv("SPATTN_DIRECT_LAUNCH", "0")
    direct.launch(kernel, (1,), x, 8, 1.0, BLOCK=16)
    assert paths(kernel) == ["triton", "triton"]


def test_the_cache_starts_afresh_when_full(monkeypatch):
    monkeypatch.setattr(direct, "_MAX_ENTRIES", 2)
    kernel, x = FakeKernel(), torch.zeros(4)
    for n in (1, 2, 3, 3):
        direct.launch(kernel, (1,), x, n, 1.0, BLOCK=16)
    assert paths(kernel) == ["triton", "triton", "triton", "direct"]
    assert len(direct._compiled) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("source", [
    "pattern p { heads { causal & window(128); causal & stride(128) } }",
    "pattern p { blocks(64) { band(1, 1) | global(first = 2) | random(3, seed = 0) } }",
    "pattern p { band(100, 30) | global(first = 3) }",
])
def test_gpu_direct_launches_match_tritons_path(source, monkeypatch):
    import spattn_dsl
    from spattn_dsl.runtime import compile
    pattern = spattn_dsl.loads(source).pattern("p")
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 1000, 64, device="cuda", dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    grad = torch.randn_like(q)
    attn = compile(pattern, block_m=64, block_n=64, num_warps=4, num_stages=2)

    def step():
        out = attn(q, k, v)
        return (out, *torch.autograd.grad(out, (q, k, v), grad))

    monkeypatch.setenv("SPATTN_DIRECT_LAUNCH", "0")
    expected = step()
    monkeypatch.delenv("SPATTN_DIRECT_LAUNCH")
    step()  # through Triton: remembers each kernel's compiled kernel
    assert direct._compiled, "no kernel was remembered"
    counted = {key: (Counting(compiled), tail) for key, (compiled, tail) in direct._compiled.items()}
    monkeypatch.setattr(direct, "_compiled", counted)
    for got, want in zip(step(), expected):  # direct
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert all(compiled.launches for compiled, _ in counted.values())


class Counting:
    """A compiled kernel that counts its direct launches."""

    def __init__(self, compiled):
        self.compiled, self.launches = compiled, 0
        self.function, self.packed_metadata = compiled.function, compiled.packed_metadata

    def run(self, *args):
        self.launches += 1
        return self.compiled.run(*args)

    def __getitem__(self, grid):
        self.launches += 1
        return self.compiled[grid]
