"""The plan for one training run, from its config alone (no model is built, no device is touched).

    plan = make_plan(cfg)          # cfg: research.config.Config (model, train budget, mesh, plan settings)
    print(render_text(plan))       # or json.dumps(plan)

Figures: parameter counts and FLOPs per token (research/flops.py), the budget (steps, tokens,
training FLOPs in both conventions), Chinchilla-optimal tokens (20 per parameter, and N_opt /
D_opt from a fitted L(N, D) when plan.fit names a fit.json), memory per device by kind and remat
policy under the mesh (flops.memory_estimate), whether it fits plan.device, and the wall time at
an assumed MFU. Every memory figure is in bytes (decimal GB in the text table).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from research import flops, memory, memory_fit
from research.budget import budget
from research.config.schema import Config
from research.errors import ConfigError
from research.parallel.mesh import mesh_shape
from research.parallel.rules import logical_shards, make_rules

GB = 1e9
REMATS = ("none", "dots_saveable", "full")


def plan_devices(cfg: Config) -> tuple[int, dict[str, int]]:
    """(device count, mesh sizes): plan.devices, or the product of the mesh's fixed sizes (-1 -> 1)."""
    mesh = cfg.mesh
    sizes = {"data": mesh.data, "fsdp": mesh.fsdp, "tensor": mesh.tensor}
    n = cfg.plan.devices if cfg.plan.devices is not None else math.prod(v for v in sizes.values() if v != -1)
    if n < 1:
        raise ConfigError(f"plan.devices={n} must be a positive device count, e.g. plan.devices=1024.")
    try:
        return n, mesh_shape(mesh, n)
    except ConfigError as e:
        raise ConfigError(f"{e} (planning for plan.devices={n}; set plan.devices to a count the mesh can fill)") from e


def chinchilla_fit(path: str | Path, compute: float) -> dict[str, Any]:
    """N_opt, D_opt for compute C = 6 N D from a fitted L = E + A/N^alpha + B/D^beta (Hoffmann et al. eq. 4):
    G = (alpha A / (beta B))^(1/(alpha+beta)), N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = (C/6) / N_opt."""
    p = Path(path).expanduser()
    try:
        fit = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"plan.fit={path} cannot be read as JSON ({e}); point it at a fit.json.") from e
    params = fit.get("params") if isinstance(fit, dict) else None
    needed = ("E", "A", "B", "alpha", "beta")
    if not isinstance(params, dict) or any(k not in params for k in needed):
        raise ConfigError(
            f"plan.fit={path} holds no Chinchilla parameters (E, A, B, alpha, beta); make one with "
            "`python -m analysis fit SWEEP_DIR --law chinchilla --out DIR` and pass DIR/fit.json."
        )
    E, A, B, alpha, beta = (float(params[k]) for k in needed)
    if min(A, B, alpha, beta) <= 0:
        raise ConfigError(f"plan.fit={path} has non-positive A, B, alpha or beta; refit it.")
    G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    n_opt = G * (compute / 6.0) ** (beta / (alpha + beta))
    d_opt = compute / 6.0 / n_opt
    return {
        "fit": str(p),
        "fit_law": fit.get("law"),
        "fit_n_column": (fit.get("columns") or {}).get("N"),
        "fit_params": {k: float(params[k]) for k in needed},
        "fit_compute": compute,
        "fit_N_opt": n_opt,
        "fit_D_opt": d_opt,
        "fit_tokens_per_param": d_opt / n_opt,
        "fit_loss_opt": E + A / n_opt**alpha + B / d_opt**beta,
    }


def _device_memory(cfg: Config) -> int | None:
    plan = cfg.plan
    if plan.device_memory_gb is not None:
        if plan.device_memory_gb <= 0:
            raise ConfigError(f"plan.device_memory_gb={plan.device_memory_gb} must be positive, e.g. 80.")
        return round(plan.device_memory_gb * GB)
    if plan.device is None:
        return None
    gb = memory.device_memory_gb(plan.device)
    if gb is None:
        raise ConfigError(
            f"plan.device={plan.device!r} is not in the memory table ({', '.join(memory.DEVICE_MEMORY_GB)}); "
            "name one of those or set plan.device_memory_gb."
        )
    return round(gb * GB)


def _estimate(cfg: Config, sizes: dict[str, int]) -> dict[str, Any]:
    return memory.memory_estimate(
        cfg.model,
        batch_size=cfg.train.batch_size,
        seq_len=budget(cfg).seq_len,
        mesh_shape=sizes,
        rules=dict(cfg.mesh.rules),
        microbatches=cfg.train.microbatches,
    )


def _min_devices(cfg: Config, usable: float) -> dict[str, int | None] | None:
    """Per remat policy, the smallest power-of-two device count (filling the mesh's -1 axis, up to
    2^20 devices) whose plan fits in `usable` bytes; None when the mesh has no -1 axis."""
    mesh = cfg.mesh
    if -1 not in (mesh.data, mesh.fsdp, mesh.tensor):
        return None
    fixed = math.prod(v for v in (mesh.data, mesh.fsdp, mesh.tensor) if v != -1)
    found: dict[str, int | None] = dict.fromkeys(REMATS)
    for k in range(21):
        n = fixed * 2**k
        for remat, total in _estimate(cfg, mesh_shape(mesh, n))["total_bytes_by_remat"].items():
            if found[remat] is None and total <= usable:
                found[remat] = n
        if all(v is not None for v in found.values()):
            break
    return found


def make_plan(cfg: Config) -> dict[str, Any]:
    plan = cfg.plan
    if not 0 < plan.mfu <= 1:
        raise ConfigError(f"plan.mfu={plan.mfu} must lie in (0, 1]; 0.4 is a good large-run figure.")
    if not 0 < plan.memory_fraction <= 1:
        raise ConfigError(f"plan.memory_fraction={plan.memory_fraction} must lie in (0, 1]; JAX's default is 0.75.")
    b = budget(cfg)
    out: dict[str, Any] = flops.summary(cfg.model, b.seq_len)
    n_dev, sizes = plan_devices(cfg)
    out.update(
        batch_size=cfg.train.batch_size,
        batch_tokens=b.batch_tokens,
        steps=b.steps,
        tokens=b.tokens,
        tokens_per_param=b.tokens / out["params"],
        flops=b.flops,  # as results.json: 6 N_nonembed D
        flops_model=b.flops_model,  # 6N + 12 L H Q T per token, times D
        chinchilla_tokens=20 * out["params"],
        chinchilla_tokens_nonembed=20 * out["params_nonembed"],
    )
    if plan.fit:
        out.update(chinchilla_fit(plan.fit, out["flops"]))
    notes: list[str] = []
    cfg = _automatic_fit(cfg, sizes, out)
    est = _memory_figures(cfg, sizes, n_dev, out, notes)
    _device_figures(cfg, n_dev, est, out, notes)
    out["notes"] = notes
    return out


def _automatic_fit(cfg: Config, sizes: dict[str, int], out: dict[str, Any]) -> Config:
    """train.microbatches=auto as a run would choose it on plan.device (its usable share, or train.memory_budget_gb
    when set): cfg with the choice applied, the choice into `out`. Nothing fits: the least memory is planned
    (and reported as not fitting), the run's sentence as the reason."""
    out["microbatches_setting"] = cfg.train.microbatches
    out["memory_fit"] = None
    if not memory_fit.is_auto(cfg.train):
        return cfg
    device_memory = _device_memory(cfg)
    if cfg.train.memory_budget_gb is not None:
        usable, source = memory_fit.from_budget(cfg.train.memory_budget_gb)
    elif device_memory is not None:
        usable = round(cfg.plan.memory_fraction * device_memory)
        source = f"{cfg.plan.device}'s usable {cfg.plan.memory_fraction:.0%}"
    else:
        usable, source = None, "plan with no device (plan.device=null)"
    try:
        fit = memory_fit.choose(cfg, sizes, usable, source)
    except ConfigError as e:
        least = min(memory_fit.candidates(cfg, sizes), key=lambda c: c.planned_bytes)
        fit = memory_fit.Fit(least, -1, usable, source, str(e))  # the text's "automatic fit" line says why
    out["memory_fit"] = fit.record()
    return memory_fit.apply(cfg, fit)


def _memory_figures(cfg: Config, sizes: dict[str, int], n_dev: int, out: dict[str, Any], notes: list[str]) -> dict:
    """Memory per device under the mesh, into `out`; returns the estimate."""
    train = cfg.train
    est = _estimate(cfg, sizes)
    batch_shards = logical_shards(sizes, make_rules(dict(cfg.mesh.rules)), "batch")
    if train.batch_size % (batch_shards * train.microbatches):
        notes.append(
            f"train.batch_size={train.batch_size} does not split over {batch_shards} batch shards x "
            f"{train.microbatches} microbatches (a run would refuse it); activations assume "
            f"{est['batch_per_device']} sequence(s) per device"
        )
    out.update(
        devices=n_dev,
        mesh=sizes,
        batch_shards=batch_shards,
        batch_per_device=est["batch_per_device"],
        microbatches=train.microbatches,
        remat=cfg.model.remat,
        attention_impl=cfg.model.attention_impl,
        params_per_device=est["params_per_device"],
        bf16_weights_bytes=est["weights_bf16_bytes"],
        mem_weights_bytes=est["weights_bytes"],
        mem_compute_weights_bytes=est["compute_weights_bytes"],
        mem_compute_gathered_layer_bytes=est["compute_gathered_layer_bytes"],
        mem_grads_bytes=est["grads_bytes"],
        mem_optimizer_bytes=est["optimizer_bytes"],
        mem_activations_bytes=est["activations_bytes"],
        mem_total_bytes=est["total_bytes"],
        mem_activations_bytes_by_remat=est["activations_bytes_by_remat"],
        mem_total_bytes_by_remat=est["total_bytes_by_remat"],
        mem_dtypes=est["dtypes"],
    )
    return est


def _device_figures(cfg: Config, n_dev: int, est: dict, out: dict[str, Any], notes: list[str]) -> None:
    """Whether the plan fits plan.device, and the wall time at plan.mfu, into `out`."""
    plan = cfg.plan
    device_memory = _device_memory(cfg)
    out.update(device=plan.device, device_memory_bytes=device_memory, memory_fraction=plan.memory_fraction)
    if device_memory is not None:
        usable = round(plan.memory_fraction * device_memory)
        out["fits"] = est["total_bytes"] <= usable
        out["fits_by_remat"] = {k: v <= usable for k, v in est["total_bytes_by_remat"].items()}
        out["mem_headroom_bytes"] = usable - est["total_bytes"]
        out["min_devices_by_remat"] = _min_devices(cfg, usable)
    else:
        out.update(fits=None, fits_by_remat=None, mem_headroom_bytes=None, min_devices_by_remat=None)
    peak = flops.device_peak_flops(plan.device, cfg.model.compute_dtype, 1) if plan.device else None
    if plan.device and peak is None:
        notes.append(f"plan.device={plan.device!r} has no peak FLOP/s in research/flops.py, so no wall time")
    out.update(mfu_assumed=plan.mfu, device_peak_flops=peak)
    if peak:
        seconds = out["flops_model"] / (n_dev * peak * plan.mfu)
        out.update(wall_seconds=seconds, device_hours=seconds * n_dev / 3600)
    else:
        out.update(wall_seconds=None, device_hours=None)


# ---------------------------------------------------------------------------------------------
# Text


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.4g}{unit}"
    return f"{n:.4g}"


def _gb(n: float) -> str:
    return f"{n / GB:,.2f} GB"


def _duration(seconds: float) -> str:
    for unit, scale in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds:.3g} s"


def _compute_note(p: dict[str, Any]) -> str:
    dt = p["mem_dtypes"]
    parts = [f"{dt['compute']} casts of the local weights" if dt["compute"] != dt["weights"] else "no casts"]
    parts.append(
        f"one layer all-gathered over FSDP ({_gb(p['mem_compute_gathered_layer_bytes'])})"
        if p["mem_compute_gathered_layer_bytes"]
        else "no FSDP gather"
    )
    return " + ".join(parts)


def render_text(p: dict[str, Any]) -> str:
    dt = p["mem_dtypes"]
    mesh = " x ".join(f"{k} {v}" for k, v in p["mesh"].items())
    lines = [
        f"model {p['model']}: {p['params']:,} parameters ({_human(p['params'])})"
        + (f", paper {_human(p['paper_params'])} ({100 * p['params_vs_paper']:+.2f}%)" if "paper_params" in p else ""),
        f"  embedding       {p['params_embed']:>20,}  token + position embeddings (+ untied head)",
        f"  non-embedding   {p['params_nonembed']:>20,}  {_human(p['params_nonembed'])}",
        f"FLOPs per token (training, forward + backward) at seq_len {p['seq_len']}",
        f"  6N              {p['flops_per_token_6n']:>20,}  6 x non-embedding params (Kaplan)",
        f"  6N + 12LHQT     {p['flops_per_token']:>20,}  6 x (params - positions) + attention (PaLM; MFU uses this)",
        f"budget: {p['steps']:,} steps x {p['batch_tokens']:,} tokens ({p['batch_size']} x {p['seq_len']}) = "
        f"{_human(p['tokens'])} tokens, {p['tokens_per_param']:.3g} tokens/param",
        f"  training FLOPs  {p['flops']:.3e} (6 N_nonembed D)   {p['flops_model']:.3e} (6N + 12LHQT)",
        f"  Chinchilla      20 tokens/param -> {_human(p['chinchilla_tokens'])} tokens "
        f"({_human(p['chinchilla_tokens_nonembed'])} counting non-embedding params, as train.tokens_per_param=20)",
    ]
    if "fit_N_opt" in p:
        lines.append(
            f"  fitted optimum  at C = {p['fit_compute']:.3e}: N_opt {_human(p['fit_N_opt'])}, D_opt "
            f"{_human(p['fit_D_opt'])} ({p['fit_tokens_per_param']:.3g} tokens/param; {p['fit']})"
        )
    lines += [
        f"memory per device: {p['devices']:,} device(s), mesh {mesh}, {p['batch_per_device']} sequence(s) of "
        f"{p['seq_len']} per device per microbatch",
        f"  rule of thumb   {_gb(p['bf16_weights_bytes']):>14}  bf16 weights of the whole model = 2 bytes x "
        f"{_human(p['params'])} params (unsharded); the real budget:",
        f"  weights         {_gb(p['mem_weights_bytes']):>14}  {dt['weights']} master copy, "
        f"{_human(p['params_per_device'])} params on this device",
        f"  compute copies  {_gb(p['mem_compute_weights_bytes']):>14}  {_compute_note(p)}",
        f"  gradients       {_gb(p['mem_grads_bytes']):>14}  {dt['grads']}",
        f"  optimizer       {_gb(p['mem_optimizer_bytes']):>14}  AdamW mu + nu, {dt['optimizer']}",
        f"  activations     {_gb(p['mem_activations_bytes']):>14}  remat={p['remat']}, attention_impl="
        f"{p['attention_impl']}, {dt['activations']}",
        f"  total           {_gb(p['mem_total_bytes']):>14}",
        "  by remat        " + "   ".join(f"{k} {_gb(v)}" for k, v in p["mem_total_bytes_by_remat"].items()),
    ]
    if p["memory_fit"] is not None:
        lines.append(
            f"  automatic fit   train.microbatches=auto -> {p['microbatches']} microbatches, remat={p['remat']}: "
            + p["memory_fit"]["reason"].split(": ", 1)[-1]
        )
    if p["device_memory_bytes"] is not None:
        usable = p["memory_fraction"] * p["device_memory_bytes"]
        verdict = "fits" if p["fits"] else "does NOT fit"
        lines.append(
            f"  {p['device'] or 'device'} {_gb(p['device_memory_bytes'])}, usable {_gb(usable)} "
            f"({p['memory_fraction']:.0%}): {verdict} (remat: "
            + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in p["fits_by_remat"].items())
            + ")"
        )
        if p["min_devices_by_remat"] is not None:
            lines.append(
                "  fits from       "
                + ", ".join(
                    f"remat {k}: {f'{v:,} devices' if v is not None else 'never (up to 2^20)'}"
                    for k, v in p["min_devices_by_remat"].items()
                )
                + " (powers of two filling the mesh's -1 axis)"
            )
    if p.get("wall_seconds") is not None:
        lines.append(
            f"time: {_duration(p['wall_seconds'])} on {p['devices']:,} x {p['device']} at MFU {p['mfu_assumed']:.2f} "
            f"({p['device_peak_flops'] / 1e12:.4g} TFLOP/s peak, {p['mem_dtypes']['compute']}), "
            f"{p['device_hours']:,.4g} device-hours"
        )
    lines += [f"note: {n}" for n in p["notes"]]
    return "\n".join(lines)
