"""The official checkpoints' tensor layout and this package's, and the maps between them.

The official SPIGA stores its cascade channels-first: 1x1 `Conv1d` weights (O, I, 1),
three attention projections `attn.proj.{0,1,2}` and `Conv2d` window weights (D, C, K, K).
`spiga.model` runs token-major: `Linear` weights (O, I), one `attn.qkv` projection
(query, key, value stacked) and window weights (D, K * K * C) in the (row, column,
channel) order of the gathered samples. The window scale matrices, officially
`theta_S.N`, are `window_scale_matrices.N` here. Every other tensor has the same name
and shape.

`official_to_own` runs as a load_state_dict pre-hook of `SPIGA`, so official state_dicts
(and checkpoints written before this layout) load with `strict=True`; it leaves tensors
already in this layout alone. `own_to_official` is its inverse.
"""

from __future__ import annotations

import re

import torch

_PROJECTION = re.compile(r"^(?P<attn>.*\.attn)\.proj\.(?P<index>[012])\.(?P<kind>weight|bias)$")
_CASCADE_LINEAR = re.compile(r"^(gcn|shape_encoder)\..*\.weight$")
_WINDOW = re.compile(r"^conv_window\.\d+\.weight$")
#: The official name of the window scale matrices' buffers (`theta_S.0`, `theta_S.1`, ...).
_OFFICIAL_SCALES, _OWN_SCALES = "theta_S.", "window_scale_matrices."


def official_to_own(state_dict: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Rewrite official-layout tensors of `state_dict` (keys under `prefix`) in place."""
    projections: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for key in [k for k in state_dict if k.startswith(prefix)]:
        name = key[len(prefix):]
        value = state_dict[key]
        match = _PROJECTION.match(name)
        if match:
            group = projections.setdefault((match["attn"], match["kind"]), {})
            group[int(match["index"])] = value.squeeze(-1) if value.dim() == 3 else value
            del state_dict[key]
        elif _CASCADE_LINEAR.match(name) and value.dim() == 3 and value.shape[-1] == 1:
            state_dict[key] = value.squeeze(-1)
        elif _WINDOW.match(name) and value.dim() == 4:
            state_dict[key] = value.permute(0, 2, 3, 1).reshape(value.shape[0], -1)
        elif name.startswith(_OFFICIAL_SCALES):
            del state_dict[key]
            state_dict[prefix + _OWN_SCALES + name[len(_OFFICIAL_SCALES):]] = value
    for (attn, kind), parts in projections.items():
        if sorted(parts) != [0, 1, 2]:
            # incomplete: put them back under their names, for load_state_dict to report
            for index, value in parts.items():
                state_dict[f"{prefix}{attn}.proj.{index}.{kind}"] = value
            continue
        state_dict[f"{prefix}{attn}.qkv.{kind}"] = torch.cat([parts[0], parts[1], parts[2]])


def own_to_official(state_dict: dict[str, torch.Tensor], channels: int, window_kernel: int) -> dict[str, torch.Tensor]:
    """A copy of a `SPIGA` state_dict in the official layout (what the original code loads).

    Args:
        channels: the model's visual feature width C (`ModelConfig.channels`).
        window_kernel: K (`ModelConfig.window_kernel`).
    """
    official: dict[str, torch.Tensor] = {}
    for name, value in state_dict.items():
        if name.endswith((".attn.qkv.weight", ".attn.qkv.bias")):
            attn, kind = name.rsplit(".qkv.", 1)
            for index, part in enumerate(value.chunk(3)):
                official[f"{attn}.proj.{index}.{kind}"] = part.unsqueeze(-1) if kind == "weight" else part
        elif _CASCADE_LINEAR.match(name) and value.dim() == 2:
            official[name] = value.unsqueeze(-1)
        elif _WINDOW.match(name) and value.dim() == 2:
            official[name] = value.reshape(value.shape[0], window_kernel, window_kernel, channels).permute(0, 3, 1, 2)
        elif name.startswith(_OWN_SCALES):
            official[_OFFICIAL_SCALES + name[len(_OWN_SCALES):]] = value
        else:
            official[name] = value
    return official
