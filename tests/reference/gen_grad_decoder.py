"""Gradient fixtures for bert-decoder (M8), by torch.autograd in float64 on the real transformers
BertLayer / BertEncoder (BertConfig(is_decoder=True, add_cross_attention=True, hidden_act="gelu"),
attn_implementation="eager"), the masks built by BertModel's own code (causal + padding and the
memory's padding as additive finfo.min), plus the modality projector of gen_decoder.py (proj.video,
proj.audio, type_embedding.*: memory = cat([mean_f(video) Wv^T + bv + tv, mean_f(audio) Wa^T + ba
+ ta], dim=1)). What each file holds: grad_fixture.py.
    python tests/reference/gen_grad_decoder.py   (torch 2.x, transformers 5.x)
Writes tests/fixtures/grad_decoder_<case>.safetensors and tests/fixtures/grad_decoder_list.inc.

Fully masked rows are covered: transformers adds finfo.min to every logit of such a row, so the
row is the uniform average and its (finite) gradient still reaches the queries and keys through
the softmax (dS = (dP - D) / J).
"""
import torch
from torch import nn
from transformers import BertConfig, BertModel

from grad_fixture import f32, randn, randomize, save, write_list


class Decoder(nn.Module):
    """The state dict the C loader reads at the root: one BertLayer's names (single) or
    BertEncoder's layer.N.*, then the projector's."""

    def __init__(self, bert, single, hidden, video=None, audio=None, tv=False, ta=False):
        super().__init__()
        self.__dict__["bert"] = bert  # runs the masks and the layers; not a submodule
        self.single = single
        if single:
            for n, c in bert.encoder.layer[0].named_children():
                self.add_module(n, c)
        else:
            self.layer = bert.encoder.layer
        proj = {}
        if video:
            proj["video"] = nn.Linear(video, hidden)
        if audio:
            proj["audio"] = nn.Linear(audio, hidden)
        if proj:
            self.proj = nn.ModuleDict(proj)
        types = {}
        if tv:
            types["video"] = nn.Parameter(torch.zeros(hidden))
        if ta:
            types["audio"] = nn.Parameter(torch.zeros(hidden))
        if types:
            self.type_embedding = nn.ParameterDict(types)

    def project(self, name, x):
        m = self.proj[name](x.mean(1))
        if hasattr(self, "type_embedding") and name in self.type_embedding:
            m = m + self.type_embedding[name]
        return m

    def forward(self, x, am, mem, em, video=None, audio=None):
        if mem is None:
            mem = torch.cat([self.project(n, t) for n, t in (("video", video), ("audio", audio))
                             if t is not None], 1)
        a, e = self.bert._create_attention_masks(am, em, x, mem, None)
        if self.single:
            return self.bert.encoder.layer[0](x, attention_mask=a, encoder_hidden_states=mem,
                                              encoder_attention_mask=e)
        return self.bert.encoder(x, attention_mask=a, encoder_hidden_states=mem,
                                 encoder_attention_mask=e).last_hidden_state


def case(name, *, hidden=16, heads=4, inter=32, layers=1, B=2, T=5, M=7, am=None, em=None,
         eps=1e-12, meta_eps=True, single=False, ew=None, av=None, tv=False, ta=False,
         feed=None):
    """av = (Fv, Nv, Dv, Fa, Na, Da): the projector (Dv / Da None: no such projection); feed:
    the memory's inputs given ("memory", or those of "video", "audio" given; default: every
    modality of the projector, else the memory)."""
    cfg = BertConfig(hidden_size=hidden, num_attention_heads=heads, intermediate_size=inter,
                     num_hidden_layers=layers, is_decoder=True, add_cross_attention=True,
                     hidden_act="gelu", layer_norm_eps=eps, attn_implementation="eager")
    bert = BertModel(cfg, add_pooling_layer=False)
    if ew:  # BLIP's encoder_width: the cross-attention's keys and values read another width
        for lay in bert.encoder.layer:
            lay.crossattention.self.key = nn.Linear(ew, hidden)
            lay.crossattention.self.value = nn.Linear(ew, hidden)
    Fv, Nv, Dv, Fa, Na, Da = av or (0, 0, None, 0, 0, None)
    m = Decoder(bert, single, ew or hidden, Dv, Da, tv, ta).double().eval()
    bert.double().eval()
    randomize(m)
    with torch.no_grad():  # LayerNorm weights around 1, still fp32 values
        for n, p in m.named_parameters():
            if n.endswith("LayerNorm.weight"):
                p.copy_(f32(p + 1.0))
    x = f32(randn(B, T, hidden)).requires_grad_(True)
    inputs = {"hidden_states": x}
    mem = video = audio = None
    feed = feed or ("memory" if av is None else "video audio")
    if feed == "memory":
        mem = f32(randn(B, M, ew or hidden)).requires_grad_(True)
        inputs["encoder_hidden_states"] = mem
    else:
        if Dv and "video" in feed:
            video = f32(randn(B, Fv, Nv, Dv)).requires_grad_(True)
            inputs["video"] = video
        if Da and "audio" in feed:
            audio = f32(randn(B, Fa, Na, Da)).requires_grad_(True)
            inputs["audio"] = audio
    amt = emt = None
    if am is not None:
        amt = torch.tensor(am, dtype=torch.long)
        inputs["attention_mask"] = amt.bool()  # True = keep, as transformers' 1
    if em is not None:
        emt = torch.tensor(em, dtype=torch.long)
        inputs["encoder_attention_mask"] = emt.bool()
    out = m(x, amt, mem, emt, video, audio)
    assert torch.isfinite(out).all(), name
    meta = {"heads": heads}
    if meta_eps:
        meta["layer_norm_eps"] = repr(eps)
    save("decoder", name, m, inputs, out, meta)


def main():
    # one bare BertLayer, both padding masks
    case("layer", single=True, B=2, T=5, M=7,
         am=[[1] * 5, [1, 1, 1, 0, 0]], em=[[1] * 7, [1, 1, 1, 1, 0, 0, 0]])
    # lengths 1
    case("len1", layers=1, B=1, T=1, M=1)
    case("len1_b3", layers=2, B=3, T=1, M=1, heads=2, eps=1e-5)
    # a stack over lengths that are not multiples of the tiles; left padding (the first three
    # queries of item 0 see no key: fully masked rows), a fully masked memory (item 1)
    case("stack_t70_m130", layers=2, B=2, T=70, M=130, eps=1e-5,
         am=[[0] * 3 + [1] * 67, [1] * 51 + [0] * 19], em=[[1, 0] * 65, [0] * 130])
    case("stack3_heads2", layers=3, B=2, T=17, M=5, heads=2, eps=1e-6,
         am=[[1] * 17, [1] * 11 + [0] * 6], em=[[1] * 5, [1, 1, 0, 0, 0]])
    case("heads1", layers=1, B=2, T=9, M=4, heads=1, inter=24)
    case("heads8_dh2", layers=2, B=2, T=12, M=6, heads=8, inter=20, eps=1e-3)
    case("width12_heads3", hidden=12, heads=3, inter=40, layers=1, B=2, T=33, M=3, eps=1e-7)
    case("defaults_t65", layers=1, B=2, T=65, M=3, meta_eps=False)
    case("single_full_rows", single=True, B=2, T=6, M=4, eps=1e-5,
         am=[[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]], em=[[0, 0, 0, 0], [1, 0, 1, 0]])
    # the memory of another width (encoder_width, BLIP's cross-attention keys and values)
    case("encoder_width", layers=2, B=2, T=7, M=9, ew=10, em=[[1] * 9, [1] * 5 + [0] * 4])
    # the projector: video and audio with type embeddings, video alone, audio alone, masks
    case("proj_av_types", layers=2, B=2, T=6, av=(3, 4, 12, 5, 3, 10), tv=True, ta=True,
         em=[[1] * 7, [1] * 4 + [1, 0, 0]])
    case("proj_video", layers=1, B=2, T=8, av=(2, 5, 6, 0, 0, None),
         am=[[1] * 8, [1] * 5 + [0] * 3])
    case("proj_audio_type", layers=1, B=3, T=4, av=(0, 0, None, 4, 6, 7), ta=True, eps=1e-5)
    case("proj_av_single", single=True, B=2, T=5, av=(1, 3, 8, 2, 2, 9), tv=True,
         em=[[1] * 5, [0] * 5])
    # a module with both projections: one modality alone, or the memory itself (the unused
    # projections' gradients are 0)
    case("proj_av_feed_video", layers=1, B=2, T=5, av=(2, 3, 6, 2, 4, 5), tv=True, ta=True,
         feed="video")
    case("proj_av_feed_memory", layers=1, B=2, T=5, M=6, av=(2, 3, 6, 2, 4, 5), tv=True,
         feed="memory", em=[[1] * 6, [1, 1, 0, 0, 1, 0]])
    write_list("grad_decoder_list.inc", "gen_grad_decoder.py")


if __name__ == "__main__":
    main()
