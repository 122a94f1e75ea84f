"""Matmul FLOPs of a traced program with loop trip counts counted (XLA's cost analysis counts a loop body once).

`dot_flops(fn, *args)` traces `fn` (abstract arguments are fine: nothing is allocated or compiled) and sums
2 x M x N x K over every dot_general and convolution of its jaxpr, a `scan` body `length` times, a
`shard_map` body once per shard, a `cond` by its costliest branch, a `while_loop` body `while_trips` times
(default 1: its trip count is a runtime value; pass the count you measured). Elementwise work is not
counted; in a transformer step the matmuls are nearly all of it. What is counted is what the program asks
for (padding, masked attention blocks, recomputation under remat included): the executed side of an
executed / necessary ratio.
"""
from __future__ import annotations

import math

import jax
from jax.extend import core as jcore


def dot_flops(fn, *args, while_trips: int = 1, **kwargs) -> float:
    closed = jax.make_jaxpr(fn)(*args, **kwargs)
    return _count(closed.jaxpr, while_trips)


def _sub_jaxprs(params: dict):
    for v in params.values():
        for x in (v if isinstance(v, (tuple, list)) else (v,)):
            if isinstance(x, jcore.ClosedJaxpr):
                yield x.jaxpr
            elif isinstance(x, jcore.Jaxpr):
                yield x


def _count(jaxpr, while_trips: int) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape        # [out, in / groups, *spatial] in the default layout
            dn = eqn.params["dimension_numbers"]
            kernel = math.prod(rhs[d] for d in dn.rhs_spec[1:]) if dn is not None else math.prod(rhs[1:])
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * kernel
        elif name == "scan":
            total += eqn.params["length"] * _count(eqn.params["jaxpr"].jaxpr, while_trips)
        elif name == "while":
            total += while_trips * _count(eqn.params["body_jaxpr"].jaxpr, while_trips)
        elif name == "cond":
            total += max(_count(b.jaxpr, while_trips) for b in eqn.params["branches"])
        elif name == "shard_map":
            mesh, body = eqn.params["mesh"], eqn.params["jaxpr"]
            shards = math.prod(mesh.shape[a] for a in eqn.params.get("manual_axes", mesh.axis_names))
            total += shards * _count(body.jaxpr if hasattr(body, "jaxpr") else body, while_trips)
        else:
            total += sum(_count(j, while_trips) for j in _sub_jaxprs(eqn.params))
    return total


def decoder_flops(text_cfg) -> dict[str, float]:
    """Forward matmul FLOPs of the text decoder by unit: "token" (every layer's projections and MLP for one
    token), "pair" (every layer's attention scores and weighted sum for one query-key pair) and "logit"
    (the lm head for one token)."""
    t = text_cfg
    q, kv = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    per_layer = t.hidden_size * (q + 2 * kv) + q * t.hidden_size + 3 * t.hidden_size * t.intermediate_size
    return {"token": 2.0 * t.num_hidden_layers * per_layer, "pair": 4.0 * t.num_hidden_layers * q,
            "logit": 2.0 * t.hidden_size * t.vocab_size}
