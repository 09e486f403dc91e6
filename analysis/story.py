"""One plain sentence of what a valid fit means (fit.json's `summary`, printed by the CLI and the sweep report)."""

from __future__ import annotations


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _span(result: dict, key: str, fmt=_pct) -> str:
    lo_hi = result.get("intervals", {}).get(key)
    return f" (95%: {fmt(lo_hi[0])} to {fmt(lo_hi[1])})" if lo_hi else ""


def headline(result: dict) -> str:
    p, d, law = result["params"], result.get("derived", {}), result["law"]
    if law in ("isoflop", "envelope"):
        a, b = p["a"], p["b"]
        key = next((k for k in d if k.startswith("tokens_per_param@")), None)
        tpp = f"; at C = {float(key.split('@')[1]):.3g} FLOP that is {d[key]:.3g} tokens per parameter" if key else ""
        return (
            f"Compute-optimal models grow as N_opt ~ C^{a:.3f}{_span(result, 'a', lambda x: f'{x:.3f}')} and "
            f"D_opt ~ C^{b:.3f}{tpp}."
        )
    if law == "chinchilla":
        key = next((k for k in d if k.startswith("tokens_per_param@")), None)
        c = float(key.split("@")[1]) if key else None
        tpp = f"; at C = {c:.3g} FLOP the fit asks for {d[key]:.3g} tokens per parameter" if key else ""
        return (
            f"Loss falls as N^-{p['alpha']:.3f} and D^-{p['beta']:.3f} above E = {p['E']:.3g}; compute-optimal models "
            f"grow as N_opt ~ C^{d['a']:.3f}{tpp}."
        )
    variable = law[-1].upper() if law.startswith("kaplan_") and len(law) == 8 else "N"
    alpha = next((k for k in p if k.startswith("alpha")), None)
    ranges = result.get("ranges", {})
    at = ""
    if variable == "N" and "D" in ranges and ranges["D"][1] <= 1.1 * ranges["D"][0]:
        at = f" at D = {ranges['D'][0]:.3g} tokens"
    if "E" in p and alpha:
        share = d.get("reduction_per_doubling", 1 - 2 ** -p[alpha])
        return (
            f"Each doubling of {variable}{at} removes {_pct(share)}{_span(result, 'reduction_per_doubling')} of the "
            f"loss above its floor E = {p['E']:.4g} nats/token (the {variable} -> infinity limit{at})."
        )
    if alpha:
        return (
            f"Each doubling of {variable}{at} multiplies the loss by {2 ** -p[alpha]:.4f} "
            f"({_pct(1 - 2 ** -p[alpha])} lower), with no floor in the law."
        )
    return f"The fitted {law} law: {result['formula']}."
