"""xattn.torch's drop-in modules against bidirectional-cross-attention 0.1.0: the same state dict
names and initial values for the same torch seed, the package's checkpoints loaded with
strict=True, outputs and every parameter and input gradient equal to the package's in float64
(1e-4 (1 + |ref|); outputs 2e-5) over several configurations (prenorm, talking heads, masks with
fully masked rows and columns, rel_pos_bias, depth 2, ff_expansion_factor, final_norms,
context_dim != dim), return_attn, dropout in training, and a few AdamW steps of a training loop
equal to the same loop with the package."""
import copy

import pytest

torch = pytest.importorskip("torch")
bca = pytest.importorskip("bidirectional_cross_attention")
xt = pytest.importorskip("xattn.torch")

from conftest import assert_close  # noqa: E402

TOL, GTOL = 2e-5, 1e-4
B, I, J = 2, 13, 17

ATTN_CONFIGS = {
    "default": dict(dim=32, heads=4, dim_head=16),
    "prenorm": dict(dim=32, heads=4, dim_head=16, prenorm=True),
    "talking_heads": dict(dim=24, heads=3, dim_head=8, talking_heads=True),
    "context_dim": dict(dim=32, heads=2, dim_head=16, context_dim=20, prenorm=True),
    "all": dict(dim=16, heads=4, dim_head=8, context_dim=12, prenorm=True, talking_heads=True),
}
TRANSFORMER_CONFIGS = {
    "depth2": dict(dim=24, depth=2, heads=3, dim_head=8),
    "ff_final_norms": dict(dim=16, depth=2, heads=2, dim_head=8, ff_expansion_factor=2.5,
                           final_norms=True),
    "context_dim_talking": dict(dim=16, depth=2, context_dim=20, heads=4, dim_head=4,
                                talking_heads=True),
}


def make(cls_ref, cls_new, cfg, seed=0):
    torch.manual_seed(seed)
    ref = cls_ref(**cfg)
    torch.manual_seed(seed)
    new = cls_new(**cfg)
    return ref, new


def inputs(cfg, masks, bias, heads):
    torch.manual_seed(42)
    x = torch.randn(B, I, cfg["dim"], requires_grad=True)
    c = torch.randn(B, J, cfg.get("context_dim") or cfg["dim"], requires_grad=True)
    kw = {}
    if masks:
        m = torch.rand(B, I) > 0.3
        m[0, 1] = False  # a fully masked row
        m[1] = False     # every row of batch item 1
        cm = torch.rand(B, J) > 0.3
        cm[:, 4] = False  # a fully masked column
        kw.update(mask=m, context_mask=cm)
    if bias:
        kw["rel_pos_bias"] = torch.randn(heads, I, J, requires_grad=True)
    return x, c, kw


def run(module, x, c, kw, seeds=None, **extra):
    outs = module(x, c, **kw, **extra)
    if seeds is None:
        seeds = [torch.randn(o.shape, dtype=torch.float64) for o in outs[:2]]
    loss = sum((o * s.to(o.dtype)).sum() for o, s in zip(outs[:2], seeds))
    leaves = [x, c] + ([kw["rel_pos_bias"]] if "rel_pos_bias" in kw else [])
    names = ["x", "context"] + (["rel_pos_bias"] if "rel_pos_bias" in kw else [])
    params = dict(module.named_parameters())
    grads = torch.autograd.grad(loss, leaves + list(params.values()))
    return outs, dict(zip(names + list(params), grads)), seeds


def as64(x, c, kw):
    d = lambda t: t.detach().double().requires_grad_(t.requires_grad) \
        if t.dtype.is_floating_point else t  # noqa: E731
    return d(x), d(c), {k: d(v) for k, v in kw.items()}


def compare(ref, new, cfg, masks, bias, what, **extra):
    """new (float32) against ref in float64: outputs and every gradient."""
    assert list(new.state_dict()) == list(ref.state_dict())
    x, c, kw = inputs(cfg, masks, bias, cfg.get("heads", 8))
    ref64 = copy.deepcopy(ref).double()
    outs, grads, seeds = run(new, x, c, kw, **extra)
    routs, rgrads, _ = run(ref64, *as64(x, c, kw), seeds=seeds, **extra)
    assert len(outs) == len(routs)
    for n, (o, r) in enumerate(zip(outs, routs)):
        assert o.dtype == torch.float32
        assert_close(o.detach(), r.detach(), TOL, f"{what}: output {n}")
    assert set(grads) == set(rgrads)
    worst = 0.0
    for name in rgrads:
        worst = max(worst, assert_close(grads[name], rgrads[name], GTOL, f"{what}: d {name}"))
    return worst


@pytest.mark.parametrize("name", list(ATTN_CONFIGS))
@pytest.mark.parametrize("masks,bias", [(False, False), (True, True)])
def test_attention_against_package(name, masks, bias):
    cfg = ATTN_CONFIGS[name]
    ref, new = make(bca.BidirectionalCrossAttention, xt.BidirectionalCrossAttention, cfg)
    # the same initial values from the same seed
    for (k, a), b in zip(ref.state_dict().items(), new.state_dict().values()):
        assert torch.equal(a, b), k
    if ref.talking_heads.__class__.__name__ == "Conv2d":  # non-trivial mixing
        with torch.no_grad():
            ref.talking_heads.weight.normal_(0, 0.5)
            ref.context_talking_heads.weight.normal_(0, 0.5)
    new.load_state_dict(ref.state_dict(), strict=True)  # a checkpoint of the package
    compare(ref, new, cfg, masks, bias, f"{name} masks={masks} bias={bias}")


@pytest.mark.parametrize("name", list(TRANSFORMER_CONFIGS))
@pytest.mark.parametrize("masks,bias", [(False, False), (True, True)])
def test_transformer_against_package(name, masks, bias):
    cfg = TRANSFORMER_CONFIGS[name]
    ref, new = make(bca.BidirectionalCrossAttentionTransformer,
                    xt.BidirectionalCrossAttentionTransformer, cfg, seed=1)
    for (k, a), b in zip(ref.state_dict().items(), new.state_dict().values()):
        assert torch.equal(a, b), k
    torch.manual_seed(5)
    fresh = xt.BidirectionalCrossAttentionTransformer(**cfg)  # other initial values
    fresh.load_state_dict(ref.state_dict(), strict=True)
    compare(ref, fresh, cfg, masks, bias, f"{name} masks={masks} bias={bias}")
    # return_attn is accepted and ignored, as by the package
    x, c, kw = inputs(cfg, masks, bias, cfg["heads"])
    assert len(fresh(x, c, return_attn=True, **kw)) == 2 == len(ref(x, c, return_attn=True, **kw))


def test_return_attn():
    cfg = ATTN_CONFIGS["all"]
    ref, new = make(bca.BidirectionalCrossAttention, xt.BidirectionalCrossAttention, cfg)
    # while autograd records: the package's computation, maps with their gradients
    compare(ref, new, cfg, True, True, "return_attn", return_attn=True)
    x, c, kw = inputs(cfg, True, True, cfg["heads"])
    outs = new(x, c, return_attn=True, **kw)
    (outs[2].square().sum() + outs[3].sum()).backward()  # a loss on the maps reaches the inputs
    assert x.grad is not None and x.grad.abs().sum() > 0
    # without autograd: the fused kernel's maps
    with torch.no_grad():
        got = new(x, c, return_attn=True, **kw)
        want = copy.deepcopy(ref).double()(*as64(x, c, kw)[:2], return_attn=True,
                                           **as64(x, c, kw)[2])
    for n, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and g.dtype == torch.float32
        assert_close(g, w, TOL, f"no_grad return_attn output {n}")


def test_dropout_in_training_and_eval():
    cfg = dict(dim=16, heads=2, dim_head=8, dropout=0.25, talking_heads=True)
    ref, new = make(bca.BidirectionalCrossAttention, xt.BidirectionalCrossAttention, cfg)
    x, c, kw = inputs(cfg, True, False, 2)
    # training: the package's computation, the same random stream
    torch.manual_seed(3)
    a = ref(x, c, **kw)
    torch.manual_seed(3)
    b = new(x, c, **kw)
    for g, w in zip(b, a):
        assert_close(g.detach(), w.detach(), 1e-6, "dropout in training")
    # eval: dropout is the identity and the fused core runs
    ref.eval(), new.eval()
    compare(ref, new, cfg, True, False, "dropout in eval")


def test_float64_module():
    cfg = ATTN_CONFIGS["context_dim"]
    ref, new = make(bca.BidirectionalCrossAttention, xt.BidirectionalCrossAttention, cfg)
    x, c, kw = inputs(cfg, True, False, cfg["heads"])
    got = new.double()(*as64(x, c, kw)[:2], **as64(x, c, kw)[2])
    want = ref.double()(*as64(x, c, kw)[:2], **as64(x, c, kw)[2])
    for g, w in zip(got, want):
        assert g.dtype == torch.float64
        assert_close(g.detach(), w.detach(), TOL, "float64 module (float32 attention core)")


def test_adamw_training_loop_matches_the_package():
    cfg = dict(dim=16, depth=2, context_dim=12, heads=2, dim_head=8, talking_heads=True)
    ref, new = make(bca.BidirectionalCrossAttentionTransformer,
                    xt.BidirectionalCrossAttentionTransformer, cfg, seed=7)
    ref = ref.double()
    torch.manual_seed(8)
    data = [(torch.randn(B, I, 16), torch.randn(B, J, 12), torch.randn(B, I, 16),
             torch.randn(B, J, 12)) for _ in range(4)]
    mask = torch.rand(B, I) > 0.2

    def train(model, dtype):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        losses = []
        for x, c, tx, tc in data:
            x, c, tx, tc = (t.to(dtype) for t in (x, c, tx, tc))
            out, cout = model(x, c, mask=mask)
            loss = torch.nn.functional.mse_loss(out, tx) + torch.nn.functional.mse_loss(cout, tc)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    want, got = train(ref, torch.float64), train(new, torch.float32)
    assert_close(got, want, 1e-5, "losses")
    ref_params = dict(ref.named_parameters())
    for name, p in new.named_parameters():
        assert_close(p.detach(), ref_params[name].detach(), GTOL, f"{name} after 4 AdamW steps")


@pytest.mark.parametrize("chunk", [1024, 5])
def test_feedforward_checkpointing_changes_no_number(chunk):
    """checkpoint_feedforward (the default) recomputes the feed-forwards in the backward, a piece
    of FF_CHUNK positions at a time (5: the 13 and 17 positions here in 3 and 4 pieces): the
    outputs and every gradient are those computed with the hidden layers kept, up to float32
    rounding (the matrix products run on pieces of rows, and autograd sums the residual's and
    the pieces' gradients in another order: measured 1 ulp)."""
    cfg = TRANSFORMER_CONFIGS["ff_final_norms"]
    torch.manual_seed(3)
    kept = xt.BidirectionalCrossAttentionTransformer(**cfg, checkpoint_feedforward=False)
    recomputed = xt.BidirectionalCrossAttentionTransformer(**cfg)
    recomputed.FF_CHUNK = chunk
    assert recomputed.checkpoint_feedforward
    recomputed.load_state_dict(kept.state_dict(), strict=True)
    x = torch.randn(B, I, cfg["dim"], requires_grad=True)
    c = torch.randn(B, J, cfg["dim"], requires_grad=True)
    o1, g1, seeds = run(kept, x, c, {})
    o2, g2, _ = run(recomputed, x, c, {}, seeds=seeds)

    def close(a, b, what):
        scale, err = a.abs().max().item(), (a - b).abs().max().item()
        assert err <= 4 * 2.0 ** -23 * max(scale, 1e-30), (what, err, scale)

    for n, (a, b) in enumerate(zip(o1, o2)):
        close(a, b, f"output {n}")
    assert g1.keys() == g2.keys()
    for k in g1:
        close(g1[k], g2[k], k)
