"""SAE export checked with the real libraries: SAELens and EleutherAI sparsify load what
``saedata sae export`` writes, with their own loaders, and compute the same codes and
reconstructions as saedata on the same inputs.

Not part of CI (it needs ``pip install sae-lens eai-sparsify``). Prints, per activation,
the largest code and reconstruction difference and the share of inputs whose active
latents are identical; target: codes within 1e-4 and every active set identical,
in float32 and (SAELens TopK) in bfloat16.

The last check is ``--sae RELEASE:SAE_ID``: a real SAELens release with a
``norm_scaling_factor`` (``gpt2-small-mlp-tm:blocks.0.hook_mlp_out``), its repository
laid out in a Hugging Face cache this script builds (random weights in the release's own
format; the hub is offline), loaded by ``SAE.from_pretrained`` and by saedata.

    python benchmarks/bench_sae_export.py          # seconds on a CPU
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch


def _sae(activation: str, d_in: int, d_sae: int, k: int, seed: int):
    """A saedata SAE with every part a format must carry non-trivial: an input scale,
    biases, thresholds."""
    from saedata.config import SAEConfig
    from saedata.sae import SparseAutoencoder

    torch.manual_seed(seed)
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, activation=activation, k=k, reader="gpt2", layer=5)
    sae = SparseAutoencoder(cfg)
    with torch.no_grad():
        for param, std in ((sae.b_enc, 0.1), (sae.b_dec, 0.2)):
            param.normal_(std=std)
        sae.input_scale.fill_(0.37)  # folded into the weights on export
        if activation == "jumprelu":  # thresholds around exp(-2)
            sae.log_threshold.copy_(-2.0 + 0.3 * torch.randn(d_sae))
        elif activation == "batchtopk":
            sae.batch_threshold.fill_(0.05)
    return sae.eval()


def _compare(name: str, z_ours, z_theirs, r_ours, r_theirs) -> dict:
    same = ((z_ours != 0) == (z_theirs != 0)).all(dim=-1).float().mean().item()
    return {"check": name, "max_code_diff": (z_ours - z_theirs).abs().max().item(),
            "max_recon_diff": (r_ours - r_theirs).abs().max().item(), "same_active_set": same}


RELEASE, SAE_ID = "gpt2-small-mlp-tm", "blocks.0.hook_mlp_out"


def _release(x, args, tmp: Path) -> list[dict]:
    """SAE.from_pretrained(RELEASE, SAE_ID) against saedata's resolve_sae("RELEASE:SAE_ID"),
    from a hub cache holding random weights in the release's layout."""
    import json
    import os

    from huggingface_hub import constants
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    import saedata
    from saedata.sae.formats import resolve_sae

    lookup = get_pretrained_saes_directory()[RELEASE]
    factor = lookup.norm_scaling_factor[SAE_ID]
    commit = "0" * 40
    repo = tmp / "hub" / f"models--{lookup.repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    folder = repo / "snapshots" / commit / lookup.saes_map[SAE_ID]
    raw = _sae("relu", args.d_in, args.d_sae, args.k, seed=7)
    raw.input_scale.fill_(1.0)  # the release's files carry no scale: SAELens folds the factor in on loading
    saedata.export_sae(raw, folder, to="saelens")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(normalize_activations="expected_average_only_in", model_name=lookup.model,
               hook_name=SAE_ID, metadata={**cfg.get("metadata", {}), "model_name": lookup.model, "hook_name": SAE_ID})
    (folder / "cfg.json").write_text(json.dumps(cfg))
    os.environ["SAEDATA_CACHE"] = str(tmp / "saedata-cache")
    constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = str(tmp / "hub"), True
    theirs = SAE.from_pretrained(RELEASE, SAE_ID, device="cpu")
    ours = saedata.load_sae(resolve_sae(f"{RELEASE}:{SAE_ID}"))
    unfolded = saedata.load_sae(folder)
    zt = theirs.encode(x)
    z = ours.encode(x)
    print(f"release {RELEASE}:{SAE_ID}: norm_scaling_factor {factor:.4f}; saedata's hook "
          f"{ours.cfg.hook} layer {ours.cfg.layer}; the folder read without the factor differs by "
          f"{(unfolded.encode(x) - zt).abs().max().item():.3f}")
    return [_compare(f"SAELens release id {RELEASE}:{SAE_ID}", z, zt, ours.decode(z), theirs.decode(zt))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-in", type=int, default=64)
    parser.add_argument("--d-sae", type=int, default=512)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()

    import sae_lens
    from sae_lens import SAE
    from sparsify import SparseCoder

    import saedata

    x = torch.randn(args.rows, args.d_in, generator=torch.Generator().manual_seed(1)) * 2.0 + 0.5
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for activation in ("relu", "jumprelu", "topk", "batchtopk", "abstopk"):
            ours = _sae(activation, args.d_in, args.d_sae, args.k, seed=len(rows))
            z, r = ours.encode(x), ours.decode(ours.encode(x))
            out = saedata.export_sae(ours, Path(tmp) / f"saelens-{activation}", to="saelens").path
            theirs = SAE.load_from_disk(str(out), device="cpu")
            zt = theirs.encode(x)
            rows.append(_compare(f"SAELens {sae_lens.__version__} {type(theirs).__name__} ({activation})",
                                 z, zt, r, theirs.decode(zt)))
            if activation == "topk":  # in bf16 both compute in bf16, rounding in the same order
                half = saedata.load_sae(out, dtype="bfloat16")
                theirs = SAE.load_from_disk(str(out), device="cpu", dtype="bfloat16")
                zh, zt = half.encode(x).float(), theirs.encode(x.bfloat16()).float()
                rows.append(_compare("SAELens TopKSAE (topk), both in bfloat16", zh, zt,
                                     half.decode(half.encode(x)).float(), theirs.decode(theirs.encode(x.bfloat16())).float()))
                theirs.save_model(str(Path(tmp) / "saved-by-saelens"))  # and the other way: SAELens writes bf16
                mine = saedata.load_sae(Path(tmp) / "saved-by-saelens")  # saedata computes in its dtype
                zm = mine.encode(x).float()
                rows.append(_compare(f"bf16 SAE saved by SAELens, read by saedata ({mine.cfg.dtype})", zm, zt,
                                     mine.decode(mine.encode(x)).float(), theirs.decode(theirs.encode(x.bfloat16())).float()))
                out = saedata.export_sae(ours, Path(tmp) / "layers.5", to="sparsify").path
                coder = SparseCoder.load_from_disk(out, device="cpu")
                enc = coder.encode(x)
                zs = torch.zeros_like(z).scatter(-1, enc.top_indices, enc.top_acts)
                rows.append(_compare("sparsify SparseCoder (topk)", z, zs, r,
                                     coder.decode(enc.top_acts, enc.top_indices)))
        rows += _release(x, args, Path(tmp))
    print(f"{'check':<52} {'max |code diff|':>16} {'max |recon diff|':>17} {'same active set':>16}")
    for row in rows:
        print(f"{row['check']:<52} {row['max_code_diff']:>16.2e} {row['max_recon_diff']:>17.2e} "
              f"{row['same_active_set']:>16.3f}")
    ok = all(row["max_code_diff"] <= 1e-4 and row["same_active_set"] == 1.0 for row in rows)
    print(f"target codes within 1e-4 and identical active sets: {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()
