"""Coupling subnets and flows: every registered block, exact log-determinants, invertibility, pickling."""

from __future__ import annotations

import pickle

import pytest
import torch
from FrEIA.modules import AllInOneBlock

from ssnf.errors import ConfigError
from ssnf.model.flow import NORMS, CouplingBlock, ScaleFlow, seed_permutations
from ssnf.model.subnets import BLOCKS, CouplingSubnet, SubnetFactory, SubnetSpec, parse_blocks


def _perturb(module: torch.nn.Module, std: float = 0.3) -> None:
    """Give zero-initialised output layers random weights so couplings are not the identity."""
    torch.manual_seed(3)
    for m in module.modules():
        if isinstance(m, CouplingSubnet):
            torch.nn.init.normal_(m.out.weight, std=std)
            torch.nn.init.normal_(m.out.bias, std=std)


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_every_block_keeps_shape_trains_and_pickles(name):
    spec = SubnetSpec(hidden=16, blocks=(name,), heads=4, kv_size=4)
    block = BLOCKS[name](16, spec)
    x = torch.randn(2, 16, 9, 7, requires_grad=True)  # odd sizes, larger than kv_size
    y = block(x)
    assert y.shape == x.shape
    y.pow(2).sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in block.parameters())
    clone = pickle.loads(pickle.dumps(block))
    assert torch.allclose(clone(x), y)


def test_subnet_starts_at_zero_so_couplings_start_as_identity():
    subnet = SubnetFactory(SubnetSpec(hidden=16, blocks=("conv", "attn")))(6, 8)
    assert torch.count_nonzero(subnet(torch.randn(2, 6, 8, 8))) == 0


def test_block_spelling():
    assert parse_blocks("conv,attn", 3) == [("conv", "attn")] * 3
    assert parse_blocks("conv | attn,attn", 2) == [("conv",), ("attn", "attn")]
    with pytest.raises(ConfigError, match=r"unknown block 'convv'; known blocks: attn, conv, conv1"):
        parse_blocks("conv,convv", 2)
    with pytest.raises(ConfigError, match="has 2 scale groups but the backbone gives 3 scales"):
        parse_blocks("conv|attn", 3)
    with pytest.raises(ConfigError, match="empty stack"):
        parse_blocks("conv|", 2)
    with pytest.raises(ConfigError, match="model.heads=3 does not divide model.hidden=16"):
        SubnetFactory(SubnetSpec(hidden=16, blocks=("attn",), heads=3))(4, 4)


def test_per_position_log_det_sums_to_freias():
    seed_permutations(0)
    spec = SubnetSpec(hidden=16, blocks=("conv", "attn"))
    ours = CouplingBlock(6, SubnetFactory(spec), clamp=2.0, permute_soft=False)
    _perturb(ours)
    vanilla = AllInOneBlock([(6, 5, 5)], subnet_constructor=SubnetFactory(spec), affine_clamping=2.0)
    vanilla.load_state_dict(ours.state_dict())
    x = torch.randn(3, 6, 5, 5)
    (z, ), position = ours((x,))
    (z_ref, ), log_det = vanilla((x,))
    assert position.shape == (3, 5, 5)
    assert torch.allclose(z, z_ref)
    assert torch.allclose(position.sum(dim=(1, 2)), log_det, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("norm,position", [(n, False) for n in NORMS] + [("fixed", True)])
def test_log_det_equals_the_true_jacobian(norm, position):
    """Change of variables checked against autograd's full Jacobian on a small input."""
    torch.manual_seed(0)
    seed_permutations(0)
    flow = ScaleFlow(4, SubnetSpec(hidden=8, blocks=("conv", "attn", "conv1"), heads=2), couplings=3,
                     clamp=2.0, permute_soft=norm == "actnorm", norm=norm, pos_channels=8 if position else 0)
    if flow.norm is not None:
        flow.norm.fit(torch.randn(8, 4, 3, 3) * 3 + 1)
    _perturb(flow)
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    flow = flow.double()
    jac = torch.autograd.functional.jacobian(lambda v: flow(v.view(1, 4, 3, 3))[0].flatten(), x.flatten())
    _, logabsdet = torch.linalg.slogdet(jac)
    # soft permutations are float32 rotations: orthogonal to ~1e-7, so their log-det is not exactly 0
    assert float(flow(x)[1].sum().detach()) == pytest.approx(float(logabsdet), abs=1e-5)


@pytest.mark.parametrize("norm", NORMS)
def test_flow_inverts_and_pickles(norm):
    seed_permutations(1)
    flow = ScaleFlow(6, SubnetSpec(hidden=16), couplings=4, clamp=2.0, permute_soft=False, norm=norm)
    if flow.norm is not None:
        flow.norm.fit(torch.randn(4, 6, 8, 8))
    _perturb(flow)
    x = torch.randn(2, 6, 8, 8)
    z, log_jac = flow(x)
    assert log_jac.shape == (2, 8, 8)
    assert torch.allclose(flow.inverse(z), x, atol=1e-4)
    clone = pickle.loads(pickle.dumps(flow))
    assert torch.equal(clone(x)[0], z)


def test_fixed_norm_is_frozen_and_actnorm_learns():
    fixed = ScaleFlow(4, SubnetSpec(hidden=8), 1, 2.0, False, "fixed")
    act = ScaleFlow(4, SubnetSpec(hidden=8), 1, 2.0, False, "actnorm")
    assert not any(n.startswith("norm.") for n, _ in fixed.named_parameters())
    assert {"norm.shift", "norm.log_scale"} <= {n for n, _ in act.named_parameters()}
    feats = torch.randn(16, 4, 5, 5) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1) + 5
    fixed.norm.fit(feats)
    z, _ = fixed.norm(feats)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4)
    assert torch.allclose(z.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-3)


def test_permutations_follow_the_seed():
    def build(seed):
        seed_permutations(seed)
        torch.manual_seed(seed)
        return ScaleFlow(8, SubnetSpec(hidden=8), 3, 2.0, False, "none").state_dict()

    a, b, c = build(0), build(0), build(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("w_perm"))


def test_position_conditioning_makes_the_density_depend_on_where_a_feature_is():
    seed_permutations(2)
    plain = ScaleFlow(4, SubnetSpec(hidden=8, blocks=("conv1",)), 2, 2.0, False, "none")
    placed = ScaleFlow(4, SubnetSpec(hidden=8, blocks=("conv1",)), 2, 2.0, False, "none", pos_channels=8)
    _perturb(plain)
    _perturb(placed)
    x = torch.randn(1, 4, 1, 1).expand(1, 4, 6, 6).contiguous()  # the same feature everywhere
    for flow, varies in ((plain, False), (placed, True)):
        z, log_jac = flow(x)
        spread = float((z - z[..., :1, :1]).abs().max().detach())
        assert (spread > 1e-3) == varies
        assert torch.allclose(flow.inverse(z), x, atol=1e-5)


def test_per_scale_couplings_and_widths():
    """``model.scale_couplings`` / ``scale_hidden``: each scale's flow has its own count and subnet width; a
    spelling with the wrong number of scales is one line."""
    from ssnf.config import BackboneConfig, ModelConfig
    from ssnf.model.detector import SSNFModel

    backbone = BackboneConfig(pretrained=False)
    model = SSNFModel.build(backbone, ModelConfig(hidden=32, couplings=4, scale_couplings=(4, 2), scale_hidden=(32, 16)))
    assert [len(f.blocks) for f in model.flows] == [4, 2]
    assert [f.blocks[0].subnet.inp.out_channels for f in model.flows] == [32, 16]
    out = model(torch.rand(1, 3, 64, 64))
    assert [z.shape[1] for z, _ in out] == list(model.extractor.channels)
    with pytest.raises(ConfigError, match=r"model.scale_couplings=\[4, 2, 1\] has 3 values but the backbone gives 2"):
        SSNFModel.build(backbone, ModelConfig(scale_couplings=(4, 2, 1)))
    with pytest.raises(ConfigError, match=r"model.scale_hidden=\[32, 6\]: width 6 must be at least 4 and a multiple"):
        ModelConfig(heads=4, scale_hidden=(32, 6)).validate()
