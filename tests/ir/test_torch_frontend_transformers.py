"""Hugging Face ``transformers`` models through ``shrinkc.trace`` (torch.export).

Every architecture is built from a small config with random weights — nothing is downloaded
(``HF_HUB_OFFLINE``) — and must trace, then match eager PyTorch: the interpreter in float64
(the model traced in double: the same arithmetic), ``to_torch`` and onnxruntime (via
``to_onnx``'s export) in float32, and untuned TVM (BERT, GPT-2 and ViT in the default run,
every other architecture under ``-m slow``: a TVM build takes seconds). The traced BERT
layer must read well: one ``scaled_dot_product_attention`` per layer and no index arithmetic
left over from the mask.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests build models from configs, never download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers as T  # noqa: E402
from suite import assert_close, f64_inputs, f64_model  # noqa: E402

import shrinkc  # noqa: E402
from shrinkc.backends.onnx import export_model, run_onnxruntime  # noqa: E402
from shrinkc.ir.interpreter import run  # noqa: E402
from shrinkc.ir.text import graph_diff, parse_graph, print_graph  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")

VOCAB, SEQ = 100, 8
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
TEXT = dict(vocab_size=VOCAB, max_position_embeddings=64)

#: name -> (builder, inputs): "text" = input ids + a padding mask, "causal" = input ids,
#: "vision" = a 1x3x32x32 image, "audio" = 400 samples.
ARCHS: dict[str, tuple[Callable[[], torch.nn.Module], str]] = {
    # encoders
    "bert": (lambda: T.BertModel(T.BertConfig(**TEXT, **SMALL)), "text"),
    "roberta": (lambda: T.RobertaModel(T.RobertaConfig(**TEXT, **SMALL)), "text"),
    "xlm_roberta": (lambda: T.XLMRobertaModel(T.XLMRobertaConfig(**TEXT, **SMALL)), "text"),
    "distilbert": (lambda: T.DistilBertModel(T.DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
        max_position_embeddings=64)), "text"),
    "albert": (lambda: T.AlbertModel(T.AlbertConfig(**TEXT, embedding_size=16, **SMALL)), "text"),
    "electra": (lambda: T.ElectraModel(T.ElectraConfig(**TEXT, embedding_size=16, **SMALL)),
                "text"),
    "mpnet": (lambda: T.MPNetModel(T.MPNetConfig(**TEXT, **SMALL)), "text"),
    "deberta_v2": (lambda: T.DebertaV2Model(T.DebertaV2Config(**TEXT, **SMALL)), "text"),
    "t5_encoder": (lambda: T.T5EncoderModel(T.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)), "text"),
    # decoders
    "gpt2": (lambda: T.GPT2Model(T.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32,
                                              n_layer=2, n_head=4, use_cache=False)), "causal"),
    "opt": (lambda: T.OPTModel(T.OPTConfig(
        vocab_size=VOCAB, max_position_embeddings=64, hidden_size=32, num_hidden_layers=2,
        ffn_dim=64, num_attention_heads=4, word_embed_proj_dim=32, use_cache=False)), "causal"),
    "bloom": (lambda: T.BloomModel(T.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2,
                                                 n_head=4, use_cache=False)), "text"),
    "gpt_neox": (lambda: T.GPTNeoXModel(T.GPTNeoXConfig(**TEXT, use_cache=False, **SMALL)),
                 "causal"),
    "llama": (lambda: T.LlamaModel(T.LlamaConfig(**TEXT, num_key_value_heads=2, use_cache=False,
                                                 **SMALL)), "causal"),
    "mistral": (lambda: T.MistralModel(T.MistralConfig(**TEXT, num_key_value_heads=2,
                                                       use_cache=False, **SMALL)), "causal"),
    "qwen2": (lambda: T.Qwen2Model(T.Qwen2Config(**TEXT, num_key_value_heads=2, use_cache=False,
                                                 **SMALL)), "causal"),
    "gemma": (lambda: T.GemmaModel(T.GemmaConfig(**TEXT, num_key_value_heads=2, head_dim=8,
                                                 use_cache=False, **SMALL)), "causal"),
    "phi": (lambda: T.PhiModel(T.PhiConfig(**TEXT, use_cache=False, **SMALL)), "causal"),
    # vision transformers
    "vit": (lambda: T.ViTModel(T.ViTConfig(image_size=32, patch_size=8, **SMALL)), "vision"),
    "deit": (lambda: T.DeiTModel(T.DeiTConfig(image_size=32, patch_size=8, **SMALL)), "vision"),
    "beit": (lambda: T.BeitModel(T.BeitConfig(image_size=32, patch_size=8,
                                              use_relative_position_bias=True, **SMALL)),
             "vision"),
    "dinov2": (lambda: T.Dinov2Model(T.Dinov2Config(image_size=32, patch_size=8, **SMALL)),
               "vision"),
    "clip_vision": (lambda: T.CLIPVisionModel(T.CLIPVisionConfig(image_size=32, patch_size=8,
                                                                 **SMALL)), "vision"),
    "levit": (lambda: T.LevitModel(T.LevitConfig(
        image_size=32, hidden_sizes=[16, 32, 48], num_attention_heads=[1, 2, 3],
        depths=[1, 1, 1], key_dim=[8, 8, 8], patch_size=16)), "vision"),
    # windowed attention (two blocks per stage: the second one's windows are shifted)
    "swin": (lambda: T.SwinModel(T.SwinConfig(image_size=32, patch_size=4, embed_dim=16,
                                              depths=[2, 2], num_heads=[2, 2], window_size=4)),
             "vision"),
    # convnets, mobile and hybrid
    "resnet": (lambda: T.ResNetModel(T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16],
                                                    depths=[1, 1])), "vision"),
    "regnet": (lambda: T.RegNetModel(T.RegNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64],
                                                    depths=[1, 1, 1, 1], groups_width=8)),
               "vision"),
    "convnext": (lambda: T.ConvNextModel(T.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1],
                                                          num_stages=2)), "vision"),
    "convnextv2": (lambda: T.ConvNextV2Model(T.ConvNextV2Config(hidden_sizes=[8, 16],
                                                                depths=[1, 1], num_stages=2)),
                   "vision"),
    "poolformer": (lambda: T.PoolFormerModel(T.PoolFormerConfig(hidden_sizes=[8, 16, 32, 64],
                                                                depths=[1, 1, 1, 1])), "vision"),
    "mobilenet_v1": (lambda: T.MobileNetV1Model(T.MobileNetV1Config(image_size=32,
                                                                    depth_multiplier=0.25)),
                     "vision"),
    "mobilenet_v2": (lambda: T.MobileNetV2Model(T.MobileNetV2Config(image_size=32,
                                                                    depth_multiplier=0.25)),
                     "vision"),
    "mobilevit": (lambda: T.MobileViTModel(T.MobileViTConfig(
        image_size=32, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64])),
        "vision"),
    # segmentation backbones
    "segformer": (lambda: T.SegformerModel(T.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
        num_attention_heads=[1, 2], decoder_hidden_size=16, patch_sizes=[7, 3], strides=[4, 2],
        mlp_ratios=[2, 2])), "vision"),
    # speech (1-D convolutions, weight-normed positional conv)
    "wav2vec2": (lambda: T.Wav2Vec2Model(T.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4)), "audio"),
}
TVM_DEFAULT = ("bert", "gpt2", "vit")  # the must-show; the rest is -m slow


def make(name: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """The model (eval, seeded; batch-norm statistics made non-trivial, which random init
    leaves at mean 0 / var 1 and which otherwise shrink some convnets' outputs to ~1e-30)
    and its example inputs."""
    builder, kind = ARCHS[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = builder().eval()
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=gen) * 0.1 + 0.05)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.1)
    if kind == "vision":
        inputs = (torch.randn(1, 3, 32, 32, generator=gen),)
    elif kind == "audio":
        inputs = (torch.randn(1, 400, generator=gen),)
    else:
        ids = torch.randint(0, VOCAB, (1, SEQ), generator=gen)
        inputs = (ids,) if kind == "causal" else (ids, torch.tensor([[1] * (SEQ - 2) + [0, 0]]))
    return model, inputs


def _kwargs(name: str, inputs) -> tuple[tuple, dict]:
    """Positional input, and the padding mask by keyword (every text model names it so)."""
    return inputs[:1], ({"attention_mask": inputs[1]} if len(inputs) > 1 else {})


def trace(name: str, model, inputs):
    args, kwargs = _kwargs(name, inputs)
    return shrinkc.trace(model, args, kwargs=kwargs, name=name)


def eager(model, inputs, name: str) -> list[torch.Tensor]:
    args, kwargs = _kwargs(name, inputs)
    with torch.no_grad():
        out = model(*args, **kwargs)
    out = out.to_tuple() if hasattr(out, "to_tuple") else out
    return [t for t in (out if isinstance(out, (tuple, list)) else [out])
            if isinstance(t, torch.Tensor)]


_CACHE: dict[str, tuple] = {}


def traced(name: str):
    """(model, inputs, graph, eager float32 outputs), traced once per test process."""
    if name not in _CACHE:
        model, inputs = make(name)
        _CACHE[name] = (model, inputs, trace(name, model, inputs), eager(model, inputs, name))
    return _CACHE[name]


# ---------------------------------------------------------------------------- every architecture
@pytest.mark.parametrize("name", list(ARCHS))
def test_traces_and_matches_eager_in_float64(name):
    """The graph traced from the float64 model, run by the interpreter in float64, computes
    what eager float64 PyTorch computes (the same arithmetic: 1e-9 of the output's scale)."""
    model, inputs = make(name)
    m64, x64 = f64_model(model), f64_inputs(inputs)
    g = trace(name, m64, x64)
    with torch.no_grad():
        got = run(g, x64)
    want = eager(m64, x64, name)
    assert len(got) == len(want)
    for w in want:
        assert float(w.std()) > 1e-4, "outputs that do not vary: the comparison would be vacuous"
    assert_close(got, want, msg=name)


@pytest.mark.parametrize("name", list(ARCHS))
def test_to_torch_and_onnxruntime_match_eager(name):
    model, inputs, g, want = traced(name)
    with torch.no_grad():
        got = shrinkc.to_torch(g)(*inputs)
    assert_close(list(got) if isinstance(got, (tuple, list)) else got, want, depth=g,
                 msg=f"{name} to_torch")
    ort = run_onnxruntime(export_model(g), list(inputs), threads=1)
    assert_close(ort, want, depth=g, msg=f"{name} onnxruntime")


#: Traced with a static batch, and why (the dynamic-batch trace stops there; see the reason
#: in graph.meta["batch_static"]). Every other architecture runs at any batch.
STATIC_BATCH = {n: "aten.diff" for n in ("gpt2", "gpt_neox", "llama", "mistral", "qwen2",
                                          "gemma", "phi")}


@pytest.mark.parametrize("name", list(ARCHS))
def test_runs_at_any_batch_or_says_why_not(name):
    """A graph traced at batch 1 runs at batch 3 and computes what eager PyTorch does there
    — the encoders' padding masks included (transformers indexes them by arange(batch))."""
    from shrinkc.ir import batch

    model, inputs, g, _ = traced(name)
    if name in STATIC_BATCH:
        assert not batch.is_polymorphic(g)
        assert STATIC_BATCH[name] in g.meta["batch_static"]
        return
    assert batch.is_polymorphic(g), g.meta.get("batch_static")
    gen = torch.Generator().manual_seed(3)
    x3 = []
    for t in inputs:  # three different samples: the batch index must select each one's row
        rows = [t[0]] + [t[0][torch.randperm(t.shape[1], generator=gen)] if t.dtype == torch.long
                         else torch.randn(t.shape[1:], generator=gen) for _ in range(2)]
        x3.append(torch.stack(rows))
    if len(x3) > 1:  # padding masks of three lengths
        x3[1] = torch.tensor([[1] * SEQ, [1] * (SEQ - 3) + [0] * 3, [1] * (SEQ - 2) + [0, 0]])
    with torch.no_grad():
        got = run(g, x3)
    assert_close(got, eager(model, x3, name), depth=g, msg=name)


@pytest.mark.parametrize("name", [n if n in TVM_DEFAULT else pytest.param(
    n, marks=pytest.mark.slow) for n in ARCHS])
def test_untuned_tvm_matches_eager(name):
    from shrinkc.backends import tvm as btvm

    model, inputs, g, want = traced(name)
    mod = btvm.build(g, "host")
    assert_close(mod.run([x.numpy() for x in inputs]), want, depth=g, msg=f"{name} tvm")


# ------------------------------------------------------------------------ what the IR looks like
def test_bert_layer_reads_well():
    """One attention op per layer; the mask arithmetic (arange, index, and, expand) folded
    or reduced to a cast and a reshape of the input mask; nothing else left over (the
    token-type buffer is expanded to the batch read from the input: the graph runs at any
    batch)."""
    _, _, g, _ = traced("bert")
    ops = Counter(n.op for n in g.nodes)
    layers = 2
    assert ops["scaled_dot_product_attention"] == layers
    assert ops["linear"] == 6 * layers + 1 and ops["layer_norm"] == 2 * layers + 1
    assert set(ops) <= {"embedding", "add", "layer_norm", "dropout", "cast", "reshape",
                        "linear", "permute", "scaled_dot_product_attention", "gelu", "slice",
                        "tanh", "expand"}, ops
    assert ops["expand"] <= 1
    sdpa = [n for n in g.nodes if n.op == "scaled_dot_product_attention"]
    mask = sdpa[0].inputs[3]
    assert all(n.inputs[3] is mask for n in sdpa)  # one mask, computed once
    assert mask.dtype == "bool" and mask.producer.op == "reshape"
    assert mask.producer.inputs[0].producer.op == "cast"
    assert mask.producer.inputs[0].producer.inputs[0] is g.inputs[1]  # the attention_mask input
    layer = [n for n in g.nodes if n.loc and n.loc.startswith("encoder.layer.0.")]
    # 6 linear; reshape + permute of q, k, v and back; sdpa; 2 x (dropout, add, layer_norm); gelu
    assert len(layer) == 6 + 8 + 1 + 6 + 1
    assert graph_diff(parse_graph(print_graph(g), {k: v.data for k, v in g.constants.items()}),
                      g) is None


def test_bert_padding_mask_is_an_input():
    """The mask is not folded away: another mask gives eager PyTorch's other result."""
    model, inputs, g, _ = traced("bert")
    other = (inputs[0], torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0]]))
    want = eager(model, other, "bert")
    with torch.no_grad():
        got = run(g, list(other))
    assert_close(got, want, depth=g)
    assert float((want[0] - eager(model, inputs, "bert")[0]).abs().max()) > 1e-3


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_decoder_attention_is_causal(name):
    _, _, g, _ = traced(name)
    sdpa = [n for n in g.nodes if n.op == "scaled_dot_product_attention"]
    assert len(sdpa) == 2
    assert all(n.attrs["causal"] and len(n.inputs) == 3 for n in sdpa)


class _GroupedQueryAttention(torch.nn.Module):
    def forward(self, q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                enable_gqa=True)


def test_grouped_query_attention_stays_one_op():
    q, kv = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8)
    g = shrinkc.trace(_GroupedQueryAttention(), (q, kv, kv))
    assert [n.op for n in g.nodes] == ["scaled_dot_product_attention"]
    assert g.nodes[0].attrs["causal"]
    want = _GroupedQueryAttention()(q, kv, kv)
    assert_close(run(g, [q, kv, kv]), want)
    assert_close(run_onnxruntime(export_model(g), [q, kv, kv], threads=1), want, depth=2)


def test_unsupported_op_names_the_module():
    """Funnel's attention uses einsum, which has no IR op: one error naming op and module."""
    model = T.FunnelModel(T.FunnelConfig(vocab_size=VOCAB, block_sizes=[1, 1], d_model=32,
                                         n_head=4, d_head=8, d_inner=64)).eval()
    with pytest.raises(shrinkc.IRError, match=r"aten.einsum.default.*module encoder.blocks.0.0"):
        shrinkc.trace(model, (torch.randint(0, VOCAB, (1, SEQ)),))


def test_folded_constants_are_not_parameters():
    """Trace-time folding never folds into a parameter: every weight keeps its module path."""
    model, _, g, _ = traced("bert")
    params = {k for k, _ in model.named_parameters()}
    assert params <= set(g.constants)
    assert not [n for n in g.nodes  # all operands folded constants: it would have folded
                if all(v.is_constant and v.name not in params for v in n.inputs)]
    np.testing.assert_array_equal(g.constants["embeddings.word_embeddings.weight"].data,
                                  model.embeddings.word_embeddings.weight.detach().numpy())
