"""The attention input's spread along eigendirections on every DiT family (and the UNet), through the
pack's probe (sae_patches/input_probe.py), on the tiny test-bed models (tests/dit_testbed.py).

What each alpha scale of Apply Latent Direction multiplies alpha by, per layer: 1 (absolute), the mean
token norm ('relative to token norm'), the RMS of z . n ('relative to spread along n'). On the tiny models'
random weights the numbers show only that the probe measures these on each family's layers (the image
tokens' q/k/v input, text and pad tokens excluded); what they are on real weights is what this command
prints when pointed at one (--checkpoint is not offered: no DiT weights exist on this machine; the
probe is the same code on any MODEL, see input_probe.install_spread_probe).

    eval "$(scripts/bootstrap.sh)"; $SAE_VENV/bin/python bench/dit_spread.py [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import md_table  # noqa: E402  (puts tests/ on sys.path)

FAMILIES = ("flux", "flux2", "chroma", "qwen_image", "sd3", "lumina2")


def measure(family: str, k: int = 4, steps: int = 10) -> dict:
    import dit_testbed
    import testbed

    model = dit_testbed.tiny_dit(family)
    directions = testbed.pack_module("nodes.node_directions").ComputeAttentionEigendirections.execute(
        model, "all", k, "").args[0]
    vectors = {key: directions.layer(key).vectors[:k] for key in directions.keys}
    adapter = testbed.pack_module("sae_patches.families").adapter_for(model, "bench")
    m = model.clone()
    probe = testbed.pack_module("sae_patches.input_probe").install_spread_probe(m, adapter, vectors, 0.5, 0.8)
    cond, neg = dit_testbed.tiny_dit_conditioning(family, 1), dit_testbed.tiny_dit_conditioning(family, 2)
    size = 14 if family == "lumina2" else None
    dit_testbed.sample(m, family, cond, neg, dit_testbed.dit_latent(family, batch=2, size=size), seed=1,
                       steps=steps, cfg=2.0)
    return probe.result()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--k", type=int, default=4, help="top eigendirections per layer")
    args = parser.parse_args(argv)
    import testbed

    testbed.load_pack()
    results, rows = {}, []
    for family in FAMILIES:
        results[family] = measure(family, args.k)
        for key, r in results[family].items():
            rms = r["rms"]
            rows.append([family, key, r["evaluations"], r["tokens"], f"{r['token_norm']:.3f}",
                         " / ".join(f"{v:.3f}" for v in rms), f"{min(rms) / r['token_norm']:.3f} - "
                         f"{max(rms) / r['token_norm']:.3f}", " / ".join(f"{v:.3f}" for v in r["row_rms"])])
    print("# Spread of the attention input along the top eigendirections (tiny test-bed DiTs, window 0.5-0.8)\n")
    print(md_table(["family", "layer", "evaluations", "tokens", "token norm", f"RMS of z . n_1..{args.k}",
                    "RMS / token norm", "row RMS (the spread scale)"], rows))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
