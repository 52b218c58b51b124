"""What this CPU can do, probed once, and the oneDNN operators behind the answer.

This is the only module that touches PyTorch's private oneDNN operators
(`torch.ops.mkldnn._*`: prepacked weights, convolutions and linears with their bias, ReLU
and residual addition in one call; the operators torch.compile's frozen CPU graphs use).
Private operators come and go between torch versions and work only on some CPUs (their
bfloat16 forms need AVX-512 BW/VL/DQ or AVX-NE-CONVERT), so each is used only where the
probe has *run* it on this machine and compared it with the public operator it replaces.
Everywhere else the inference transforms keep the public operators (`F.conv2d`,
`F.linear`), which compute the same numbers.

The probe (`cpu_features()`) runs once per process, and its answer is kept on disk under
`$SPIGA_HOME/cpu-probe/` for the next processes, keyed by what it depends on (PyTorch's
version, the CPU's model and flags, spiga's version, the oneDNN ISA limit): a change of any
of them probes again, and so does `SPIGA_CPU_PROBE=refresh` in the environment
(`SPIGA_CPU_PROBE=off`: probe, neither read nor write the file). A cache that cannot be
read or written is ignored. `SPIGA_CPU_FAST_PATHS=0` in the environment turns the private
operators off; `forced_cpu_features(...)` overrides any field for a block of code (the
tests use it to run every branch on every machine).

`flushed_denormals()` flushes denormal floats to zero on the calling thread for a block of
code and restores the thread's previous setting after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import platform
import threading
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

FAST_PATHS_ENV = "SPIGA_CPU_FAST_PATHS"
#: `refresh`: probe again and rewrite the cached answer; `off`: probe without the cache.
PROBE_ENV = "SPIGA_CPU_PROBE"

_PACKING = threading.Lock()


@dataclasses.dataclass(frozen=True)
class CpuFeatures:
    """What the probe found.

    Attributes:
        isa: ATen's vector instruction set (`torch.backends.cpu.get_cpu_capability()`:
            "AVX512", "AVX2", "DEFAULT", "SVE256", ...).
        onednn: the fused oneDNN operators run, and agree with the public ones, in float32.
        onednn_bfloat16: the same in bfloat16.
        native_bfloat16: bfloat16 arithmetic in hardware (AVX-512 BF16, AMX, AVX-NE-CONVERT);
            without it bfloat16 runs emulated, slower than float32.
    """

    isa: str
    onednn: bool
    onednn_bfloat16: bool
    native_bfloat16: bool

    def fused(self, dtype: torch.dtype) -> bool:
        """Whether the fused operators may be used for `dtype`."""
        if dtype == torch.float32:
            return self.onednn
        if dtype == torch.bfloat16:
            return self.onednn_bfloat16
        return False

    def describe(self) -> str:
        return (f"ISA {self.isa}; oneDNN fused operators: float32 {'yes' if self.onednn else 'no'}, "
                f"bfloat16 {'yes' if self.onednn_bfloat16 else 'no'}; native bfloat16 "
                f"{'yes' if self.native_bfloat16 else 'no'}")


_forced: list[CpuFeatures] = []


def cpu_features() -> CpuFeatures:
    """The capabilities of this CPU and torch build (probed once; see the module docstring)."""
    if _forced:
        return _forced[-1]
    return _probe()


@contextlib.contextmanager
def forced_cpu_features(**changes: object) -> Iterator[CpuFeatures]:
    """Within the block, `cpu_features()` answers with `changes` applied, e.g.
    `forced_cpu_features(onednn=False, onednn_bfloat16=False)` for the public operators.

    Forcing a fast path on where the probe found none makes the private operators fail:
    only force paths off, or on where `_probe()` said yes.
    """
    features = dataclasses.replace(cpu_features(), **changes)  # type: ignore[arg-type]
    _forced.append(features)
    try:
        yield features
    finally:
        _forced.pop()


@functools.lru_cache(maxsize=1)
def _probe() -> CpuFeatures:
    isa = torch.backends.cpu.get_cpu_capability()
    if os.environ.get(FAST_PATHS_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        log.info("%s is off: public operators only", FAST_PATHS_ENV)
        return CpuFeatures(isa, False, False, _native_bfloat16())
    mode = os.environ.get(PROBE_ENV, "").strip().lower()
    key = _probe_key(isa)
    cached = None if mode in ("refresh", "off") else _read_cached(key)
    if cached is not None:
        log.debug("CPU probe (cached): %s", cached.describe())
        return cached
    features = _run_trials(isa)
    if mode != "off":
        _write_cached(key, features)
    return features


def _run_trials(isa: str) -> CpuFeatures:
    # the trial layers' initialisation draws from a forked generator: the caller's random
    # sequence stays as it was
    with torch.random.fork_rng(devices=[]):
        onednn = _trial(torch.float32)
        onednn_bf16 = onednn and _trial(torch.bfloat16)
    features = CpuFeatures(isa, onednn, onednn_bf16, onednn_bf16 and _native_bfloat16())
    log.debug("CPU probe: %s", features.describe())
    return features


# --- the probe's answer on disk ----------------------------------------------------------


def _cpu_identity() -> dict[str, str]:
    """The CPU's model name and feature flags (Linux: the first processor of /proc/cpuinfo)."""
    identity = {"machine": platform.machine(), "model": platform.processor(), "flags": ""}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    break  # the first processor's block ends: the others repeat it
                name, _, value = line.partition(":")
                name = name.strip()
                if name in ("model name", "Processor", "CPU part"):
                    identity["model"] = f"{identity['model']} {value.strip()}".strip()
                elif name in ("flags", "Features"):
                    identity["flags"] = hashlib.sha256(value.strip().encode()).hexdigest()[:16]
    except OSError:
        pass
    return identity


#: environment variables that cap the instruction sets oneDNN and MKL use: part of the key
_ISA_LIMITS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def _probe_key(isa: str) -> dict[str, Any]:
    """What the probe's answer depends on."""
    from ..about import __version__

    return {"torch": torch.__version__, "spiga": __version__, "isa": isa, **_cpu_identity(),
            "limits": {name: os.environ.get(name, "") for name in _ISA_LIMITS}}


def _cache_file(key: dict[str, Any]) -> Path:
    from ..hub import spiga_home

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return spiga_home() / "cpu-probe" / f"{digest}.json"


def _read_cached(key: dict[str, Any]) -> CpuFeatures | None:
    """The answer stored for `key`, or None (none stored, unreadable, or another key's)."""
    try:
        stored = json.loads(_cache_file(key).read_text(encoding="utf-8"))
        fields = stored["features"]
        if stored["key"] != key or set(fields) != {f.name for f in dataclasses.fields(CpuFeatures)}:
            return None
        if not isinstance(fields["isa"], str) or not all(isinstance(fields[name], bool) for name in fields
                                                         if name != "isa"):
            return None
        return CpuFeatures(**fields)
    except Exception:  # a missing, unreadable or malformed file: probe instead
        return None


def _write_cached(key: dict[str, Any], features: CpuFeatures) -> None:
    """Store the answer for `key`; a cache that cannot be written is skipped silently."""
    try:
        from ..io.files import write_atomic

        text = json.dumps({"key": key, "features": dataclasses.asdict(features)}, indent=1)
        write_atomic(_cache_file(key), text + "\n")
    except Exception as exc:  # a read-only or full disk must never fail a load
        log.debug("CPU probe answer not cached: %s: %s", type(exc).__name__, exc)


# --- denormals -------------------------------------------------------------------------------

_TINY_DOUBLE = 5e-324  # the smallest denormal double: multiplied by one, it is 0.0 where denormals are flushed
_ONE = 1.0


def denormals_flushed() -> bool:
    """Whether this thread flushes denormal floats to zero now (x86 FTZ/DAZ)."""
    return _TINY_DOUBLE * _ONE == 0.0


@contextlib.contextmanager
def denormal_mode_kept() -> Iterator[None]:
    """This thread's denormal setting after the block as before it, whatever the block's
    code changes (onnxruntime's `session.set_denormal_as_zero` sets it on the thread that
    creates the session, for good)."""
    flushed = denormals_flushed()
    try:
        yield
    finally:
        if denormals_flushed() != flushed:
            torch.set_flush_denormal(flushed)


@contextlib.contextmanager
def flushed_denormals() -> Iterator[None]:
    """Denormal floats flushed to zero on this thread within the block (`torch.set_flush_denormal`,
    x86; elsewhere nothing changes), the thread's previous setting restored after it.

    x86 arithmetic on values below 1.2e-38 is 10-100x slower, and flushing them moves no
    landmark; scoped to the block, the setting does not leak into the caller's own code."""
    with denormal_mode_kept():
        torch.set_flush_denormal(True)
        yield


def _native_bfloat16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _trial(dtype: torch.dtype) -> bool:
    """Run every fused operator `fuse_module` uses on small inputs and compare it with the
    public operators; any error or disagreement means no."""
    if not torch.backends.mkldnn.is_available():
        return False
    generator = torch.Generator().manual_seed(0)
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(dtype) - 0.5

    try:
        with torch.no_grad():
            x = rand(1, 8, 6, 6).contiguous(memory_format=torch.channels_last)
            conv = nn.Conv2d(8, 8, 3, padding=1).to(dtype)
            add = rand(1, 8, 6, 6).contiguous(memory_format=torch.channels_last)
            fused = FusedConv(conv, relu=True, input_size=list(x.shape))
            checks = [(fused(x), F.relu(conv(x))), (fused(x, add=add), F.relu(conv(x) + add))]
            deconv = nn.ConvTranspose2d(8, 8, 2, stride=2).to(dtype)
            checks.append((FusedConv(deconv, relu=True, input_size=list(x.shape))(x), F.relu(deconv(x))))
            linear = nn.Linear(8, 16).to(dtype)
            tokens = rand(2, 5, 8)
            checks.append((FusedLinear(linear, relu=True)(tokens), F.relu(linear(tokens))))
            for got, expected in checks:
                if got.shape != expected.shape or not torch.allclose(got.float(), expected.float(), atol=tolerance,
                                                                     rtol=tolerance):
                    log.debug("oneDNN %s trial: fused and public operators disagree", dtype)
                    return False
    except Exception as exc:  # a missing operator or an unsupported CPU; any kind means "no"
        log.debug("oneDNN %s trial failed: %s: %s", dtype, type(exc).__name__, str(exc).splitlines()[0][:200])
        return False
    return True


# --- the fused operators -------------------------------------------------------------------


class FusedConv(nn.Module):
    """A convolution (or transposed convolution) with its bias, an optional ReLU and an
    optional residual addition in one oneDNN call, the weights reordered once into
    oneDNN's blocked layout for inputs of `input_size` (default: the first call's input).

    forward(x (B, C_in, H, W) channels-last, add=None (B, C_out, H', W')) ->
    relu?(conv(x) + bias [+ add]); for transposed convolutions the addition is a second pass.
    The module is built on its device for inference: the packed weight is an opaque tensor
    that cannot be moved, copied or saved (a plain attribute, not a buffer).
    """

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d, relu: bool, input_size: list[int] | None = None):
        super().__init__()
        self.transpose = isinstance(conv, nn.ConvTranspose2d)
        self.padding = list(conv.padding)
        self.stride = list(conv.stride)
        self.dilation = list(conv.dilation)
        self.output_padding = list(conv.output_padding) if self.transpose else []
        self.groups = conv.groups
        self.attr = "relu" if relu else "none"
        self.bias = conv.bias.detach() if conv.bias is not None else None
        # Without `input_size` the weight is packed at the first call, for that call's input:
        # oneDNN's layout chosen for the real size runs the full network ~1.7x faster than a
        # size-less one, and learning the sizes beforehand needs a pass of its own (on the meta
        # device: 1.8 s of PyTorch imports and Python kernels at every start). One image and
        # several want different layouts (packed for one image, a batch of 8 ran 1.3x slower;
        # packed for 8, one image 1.7x), so each gets its own, packed at its first call.
        self._plain: torch.Tensor | None = conv.weight.detach()  # until packed (kept for a transposed one)
        self._packed: dict[bool, torch.Tensor] = {}  # one image? -> the weight packed for it
        if input_size is not None:
            self._pack(input_size)

    @property
    def weight(self) -> torch.Tensor | None:
        """A packed weight (None before the first call)."""
        return next(iter(self._packed.values()), None)

    def _pack(self, input_size: list[int]) -> torch.Tensor:
        single = input_size[0] == 1
        with _PACKING:  # two threads' first calls pack once
            if single not in self._packed:
                # a convolution's plain weight comes back from a packed one (`to_dense`); a
                # transposed convolution's does not, so that one is kept
                plain = self._plain if self._plain is not None else self.weight.to_dense()
                mkldnn = torch.ops.mkldnn
                if self.transpose:
                    self._packed[single] = mkldnn._reorder_convolution_transpose_weight(
                        plain, self.padding, self.output_padding, self.stride, self.dilation, self.groups, input_size)
                else:
                    self._packed[single] = mkldnn._reorder_convolution_weight(
                        plain, self.padding, self.stride, self.dilation, self.groups, input_size)
                    self._plain = None
        return self._packed[single]

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        mkldnn = torch.ops.mkldnn
        weight = self._packed.get(x.shape[0] == 1)
        if weight is None:
            weight = self._pack(list(x.shape))
        if self.transpose:
            out = mkldnn._convolution_transpose_pointwise(x, weight, self.bias, self.padding,
                                                          self.output_padding, self.stride, self.dilation,
                                                          self.groups, self.attr, [], "")
            return out if add is None else out + add
        if add is None:
            return mkldnn._convolution_pointwise(x, weight, self.bias, self.padding, self.stride, self.dilation,
                                                 self.groups, self.attr, [], "")
        return mkldnn._convolution_pointwise.binary(x, add, weight, self.bias, self.padding, self.stride,
                                                    self.dilation, self.groups, "add", None,
                                                    None if self.attr == "none" else self.attr, [], None)


class FusedLinear(nn.Module):
    """`nn.Linear` (optionally followed by ReLU) as one oneDNN call with prepacked weights:
    (..., C_in) -> (..., C_out). Opaque like `FusedConv`."""

    def __init__(self, linear: nn.Linear, relu: bool):
        super().__init__()
        self.attr = "relu" if relu else "none"
        self.out_features = linear.out_features
        self.weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = linear.bias.detach() if linear.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self.attr, [], "")


class FusedConvBlock(nn.Module):
    """A `ConvBlock` whose batch norm is folded, as one fused convolution with the same
    forward: (x, residual=None) -> relu?(conv(x) + bias [+ residual])."""

    def __init__(self, conv: nn.Conv2d, relu: bool, input_size: list[int] | None = None):
        super().__init__()
        self.conv = FusedConv(conv, relu, input_size)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x, add=residual)
