"""--sae RELEASE:SAE_ID: SAELens's published SAEs by release id, through the optional
sae-lens package. The package is replaced here by a stand-in with its two entry points
(the release directory and SAE.from_pretrained), so the glue is tested offline; the
real package is checked by benchmarks/bench_sae_export.py."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from saedata.config import SAEConfig
from saedata.errors import SAEFormatError
from saedata.sae import SparseAutoencoder
from saedata.sae.formats import export_sae, load_sae, resolve_sae

RELEASE = "tiny-res-test"
SAE_ID = "blocks.1.hook_resid_pre"


@pytest.fixture
def fake_saelens(tmp_path, monkeypatch):
    """A stand-in ``sae_lens`` package whose one release holds a TopK SAE that
    ``from_pretrained`` writes (with the release's norm_scaling_factor folded, as SAELens
    does) through saedata's own SAELens export; returns the call log and the SAE."""
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=16, d_sae=48, k=4, reader="tiny", layer=1, hook="resid_pre"))
    sae.input_scale.fill_(2.5)  # the norm_scaling_factor SAELens folds in
    src = tmp_path / "published"
    export_sae(sae, src, to="saelens")
    pkg = tmp_path / "site" / "sae_lens"
    (pkg / "loading").mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(f"""
        import shutil
        CALLS = []

        class SAE:
            def __init__(self, src):
                self.src = src

            @classmethod
            def from_pretrained(cls, release, sae_id, device="cpu"):
                CALLS.append((release, sae_id))
                return cls({str(src)!r})

            def save_model(self, path):
                for name in ("cfg.json", "sae_weights.safetensors"):
                    shutil.copy(f"{{self.src}}/{{name}}", f"{{path}}/{{name}}")
        """))
    (pkg / "loading" / "__init__.py").write_text("")
    (pkg / "loading" / "pretrained_saes_directory.py").write_text(textwrap.dedent(f"""
        from types import SimpleNamespace

        def get_pretrained_saes_directory():
            return {{{RELEASE!r}: SimpleNamespace(saes_map={{{SAE_ID!r}: "folder", "blocks.2.hook_resid_pre": "f2"}})}}
        """))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [m for m in sys.modules if m == "sae_lens" or m.startswith("sae_lens.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setenv("SAEDATA_CACHE", str(tmp_path / "cache"))
    import sae_lens

    return sae_lens.CALLS, sae


def test_a_release_id_loads_the_sae_once_and_keeps_it(fake_saelens, tmp_path):
    calls, sae = fake_saelens
    path = resolve_sae(f"{RELEASE}:{SAE_ID}")
    assert path == tmp_path / "cache" / "saelens" / RELEASE / SAE_ID
    loaded = load_sae(path)
    x = torch.randn(64, 16)
    assert torch.allclose(loaded.encode(x), sae.encode(x), atol=1e-5)  # the folded scale reproduces the codes
    assert (loaded.cfg.layer, loaded.cfg.hook) == (1, "resid_pre")
    assert resolve_sae(f"{RELEASE}:{SAE_ID}") == path
    assert calls == [(RELEASE, SAE_ID)]  # the second time from saedata's cache


def test_an_unknown_release_or_id_is_named(fake_saelens):
    with pytest.raises(SAEFormatError, match="no such SAE directory, nor a SAELens release 'nope'"):
        resolve_sae("nope:blocks.1.hook_resid_pre")
    with pytest.raises(SAEFormatError, match=r"release 'tiny-res-test' has no SAE 'x' \(it has 2: blocks.1"):
        resolve_sae(f"{RELEASE}:x")


def test_an_existing_path_wins_over_a_release_id(fake_saelens, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / f"{RELEASE}:{SAE_ID}").mkdir()
    assert str(resolve_sae(f"{RELEASE}:{SAE_ID}")) == f"{RELEASE}:{SAE_ID}"
    assert fake_saelens[0] == []


def test_without_sae_lens_a_release_id_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sae_lens", None)  # import fails
    with pytest.raises(SAEFormatError, match=r"needs the sae-lens package \(pip install sae-lens\)"):
        resolve_sae("gpt2-small-res-jb:blocks.8.hook_resid_pre")
