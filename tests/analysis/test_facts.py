"""Facts from the literature, pinned as tests; each cites where it comes from."""
import math
from pathlib import Path

import pytest

from spattn_dsl import load, loads
from spattn_dsl.analysis import analyze

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def pattern(text: str, name: str = "p", **params):
    return loads(text).pattern(name, **params)


def test_dense_causal_diameter_is_one():
    # Vaswani et al. 2017, "Attention Is All You Need", Table 1: self-attention has a
    # maximum path length of O(1) -- every key reaches every later query in one layer.
    report = analyze(pattern("pattern p { causal }"), 4096)
    assert report.diameter == 1 and report.causal and report.coverage == 1.0


@pytest.mark.parametrize("n,w", [(1000, 16), (4097, 4096), (131072, 4096), (77, 2)])
def test_sliding_window_causal_diameter(n, w):
    # Beltagy et al. 2020, "Longformer", section 3.1: a window of w gives a receptive field
    # of l x w after l layers; with W keys (itself included) each hop moves W - 1 tokens,
    # so the causal diameter is ceil((n - 1) / (W - 1)).
    report = analyze(pattern("pattern p(w) { causal & window(w) }", w=w), n)
    assert report.diameter == math.ceil((n - 1) / (w - 1))
    assert report.reach_to_first == report.diameter


def test_mistral_theoretical_attention_span():
    # Jiang et al. 2023, "Mistral 7B", section 2: with W = 4096 and 32 layers the theoretical
    # attention span is approximately 131K tokens (32 layers x 4095 tokens per hop).
    model = load(EXAMPLES / "mistral.spattn").model("mistral_7b")
    report = analyze(model, 131072)
    assert report.layers[-1].reach == 32 * 4095
    assert report.coverage_depth == 33  # one more layer covers the last token


@pytest.mark.parametrize("layers", [1, 3, 6])
def test_longformer_interior_span_is_layers_times_window(layers):
    # Beltagy et al. 2020, "Longformer", section 3.1: stacking l layers of a window w gives a
    # receptive field of l x w (here w = 2 x half keys around the query, plus itself).
    half = 16
    report = analyze(pattern("pattern p(h) { band(h, h) }", h=half), 1024, layers=layers)
    assert report.layers[-1].span_middle == layers * 2 * half + 1


def test_symmetric_global_token_brings_diameter_to_two():
    # Zaheer et al. 2020, "Big Bird", section 3 (and Longformer section 3.1): a global token
    # attends and is attended everywhere, so any two tokens are 2 hops apart.
    longformer = load(EXAMPLES / "longformer.spattn").pattern("longformer")
    report = analyze(longformer, 65536)
    assert report.diameter == 2 and not report.causal and report.reach_to_first == 1


def test_bigbird_with_global_blocks_has_diameter_two():
    # Zaheer et al. 2020, "Big Bird", section 2: global tokens make the graph's diameter 2
    # (ITC: the first blocks are global), whatever the random and window blocks do.
    bigbird = load(EXAMPLES / "bigbird.spattn").pattern("bigbird")
    report = analyze(bigbird, 16384)
    assert report.diameter == 2 and report.exact and report.method == "blocks(64)"


def test_sparse_transformer_strided_heads_merged_causal_diameter_two():
    # Child et al. 2019, "Generating Long Sequences with Sparse Transformers", section 4.2:
    # with stride l ~ sqrt(n), the two heads together connect every pair in two steps.
    strided = load(EXAMPLES / "sparse_transformer.spattn").pattern("strided", l=32)
    report = analyze(strided, 1024)
    assert report.causal and report.diameter == 2


def test_sparse_transformer_fixed_causal_diameter_two():
    # Child et al. 2019, section 4.2 (fixed pattern): every chunk's summary cells see their
    # chunk and are seen by all later queries, so two steps connect any pair.
    fixed = load(EXAMPLES / "sparse_transformer.spattn").pattern("fixed", l=32, c=4)
    report = analyze(fixed, 1024)
    assert report.causal and report.diameter == 2


def test_dilation_alone_never_covers():
    # Beltagy et al. 2020, section 3.1 (dilated sliding window): with dilation d a token only
    # ever meets keys of its own residue mod d, so d components never connect.
    report = analyze(pattern("pattern p { dilated(8, 2) }"), 512)
    assert report.diameter == math.inf and report.coverage < 1
    q, k = report.uncovered_pair
    assert (q - k) % 2 == 1


def test_sinks_do_not_shorten_a_causal_diameter():
    # Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks": sinks
    # keep the first tokens visible (reach to the first token is 1), but information from
    # any later token still travels through the window: the diameter is the window's over
    # the tokens after the sinks.
    n, sinks, w = 32768, 4, 1020
    streaming = load(EXAMPLES / "streaming_llm.spattn").pattern("streaming")
    report = analyze(streaming, n)
    assert report.reach_to_first == 1
    assert report.diameter == math.ceil((n - 1 - sinks) / (w - 1))
    window_only = analyze(pattern("pattern p(w) { causal & window(w) }", w=w), n - sinks)
    assert report.diameter == window_only.diameter


def test_chunked_attention_alone_never_covers():
    # Parmar et al. 2018, "Image Transformer", section 3.2 (local 1D attention in query
    # blocks): without overlap, information never leaves its chunk.
    report = analyze(pattern("pattern p { causal & chunk(64) }"), 8192)
    assert report.diameter == math.inf and report.reach_to_first == math.inf


def test_block_window_is_worse_than_a_token_window_of_equal_cost():
    # Zaheer et al. 2020, "Big Bird", section 2 (blockified attention) and DESIGN.md section 4:
    # a window of whole blocks moves information one block per hop; a token window with the
    # same keys per query moves further per hop.
    n, b = 8192, 64
    blocked = analyze(pattern("pattern p(b) { blocks(b) { band(1, 1) } }", b=b), n)
    tokens = analyze(pattern("pattern p(h) { band(h, h) }", h=3 * b // 2), n)
    assert blocked.keys_per_query == pytest.approx(tokens.keys_per_query, rel=0.02)
    assert blocked.diameter > tokens.diameter


def test_gemma3_global_layer_every_six_covers_in_six():
    # Gemma Team 2025, "Gemma 3 Technical Report", section 2: 5 local (sliding window) layers
    # for each global layer; the first global layer, the 6th, connects every pair.
    model = load(EXAMPLES / "gemma3.spattn").model("gemma3_like")
    report = analyze(model, 65536)
    assert report.coverage_depth == 6 and report.coverage == 1.0


def test_prefix_lm_prefix_sees_itself_in_one_hop():
    # Raffel et al. 2020, "T5", section 3.2.3 (prefix LM): fully visible attention over the
    # prefix; but pairs with k > q beyond the prefix stay unconnected, so the (non-causal)
    # diameter is infinite while the last token reaches the first in one hop.
    prefix_lm = load(EXAMPLES / "prefix_lm.spattn").pattern("prefix_lm")
    report = analyze(prefix_lm, 4096)
    assert not report.causal and report.diameter == math.inf and report.reach_to_first == 1


# ---------------------------------------------------------------- at the papers' sizes
def allowed_pairs(report):
    return round(report.density * report.n * report.n)


def reference_pairs(subject, n):
    mask = subject.mask(n)
    for head in range(1, subject.heads):
        mask |= subject.mask(n, head=head)
    return int(mask.sum())


def test_sparse_transformer_strided_at_its_size():
    # Child et al. 2019, "Generating Long Sequences with Sparse Transformers" (arXiv:1904.10509),
    # section 4.2, strided pattern with l ~ sqrt(n): l = 64, n = 4096. The two heads together
    # connect every pair in two causal steps; they allow 389,152 pairs (window 260,128 + stride
    # 133,120 - the 4,096 self pairs both hold).
    strided = load(EXAMPLES / "sparse_transformer.spattn").pattern("strided", l=64)
    report = analyze(strided, 4096)
    assert report.exact and report.causal and report.diameter == 2
    assert allowed_pairs(report) == 389_152 == reference_pairs(strided, 4096)


def test_sparse_transformer_fixed_at_enwik8_size():
    # Child et al. 2019, section 4.2 (fixed pattern) and section 7.2 (enwik8, 12,288 tokens,
    # c = 32 with l = 128): summary cells of every block are seen by all later queries, so
    # two steps connect any pair; 19,470,336 pairs allowed.
    fixed = load(EXAMPLES / "sparse_transformer.spattn").pattern("fixed", l=128, c=32)
    report = analyze(fixed, 12288)
    assert report.exact and report.causal and report.diameter == 2
    assert report.method.startswith("periodic")
    assert allowed_pairs(report) == 19_470_336


def test_dilation_alone_never_covers_at_a_million_tokens():
    # Beltagy et al. 2020, "Longformer" (arXiv:2004.05150), section 3.1: a dilated window
    # only meets keys of its own residue mod d; stacking never mixes the d classes.
    dilated = load(EXAMPLES / "longformer.spattn").pattern("longformer_dilated")
    report = analyze(dilated, 1 << 20)
    assert report.exact and report.diameter == math.inf and report.coverage < 0.5
    q, k = report.uncovered_pair
    assert (q - k) % 2 == 1


def test_bigbird_at_a_million_tokens_has_diameter_two():
    # Zaheer et al. 2020, "Big Bird" (arXiv:2007.14062), section 2 and appendix D: with global
    # blocks (ITC) any two tokens are two hops apart, here on 16,384 blocks of 64 tokens.
    bigbird = load(EXAMPLES / "bigbird.spattn").pattern("bigbird")
    report = analyze(bigbird, 1 << 20)
    assert report.exact and report.diameter == 2 and report.method.startswith("blocks(64)")
    assert report.reach_to_first == 1


def test_power_of_two_offsets_have_causal_diameter_sixteen():
    # Offsets 2^i for i < 16 plus the query itself (the "logarithmic" pattern of Child et al.
    # 2019, section 4, and of LogSparse, Li et al. 2019, arXiv:1907.00235): every distance
    # d < 2^16 is a sum of its binary digits, at most 16 hops; d = 65535 needs all 16.
    offsets = " | ".join(f"where(q - k == {1 << i})" for i in range(16))
    report = analyze(pattern(f"pattern p {{ causal & (where(q == k) | {offsets}) }}"), 65536)
    assert report.exact and report.causal and report.diameter == 16
    assert report.reach_to_first == 16


PAPER_SIZES = [  # (file, pattern or model, n): the sizes their sources use
    ("bigbird.spattn", "bigbird", 4096),  # Zaheer et al. 2020, section 4: 4096 tokens
    ("bigbird.spattn", "bigbird_base", 4096),
    ("gemma3.spattn", "gemma_local", 131072),  # Gemma 3 report, section 2: 128K context
    ("gemma3.spattn", "gemma3_like", 131072),
    ("longformer.spattn", "longformer", 4096),  # Beltagy et al. 2020, section 5: 4096
    ("longformer.spattn", "longformer_dilated", 4096),
    ("longformer.spattn", "longformer_base", 4096),
    ("mistral.spattn", "mistral_swa", 16384),  # Jiang et al. 2023, section 2: 16K, W = 4096
    ("mistral.spattn", "mistral_7b", 131072),  # its theoretical span, 131K
    ("prefix_lm.spattn", "prefix_lm", 512),  # Raffel et al. 2020, section 3.1.2: 512 tokens
    ("prefix_lm.spattn", "prefix_lm_12", 512),
    ("sparse_transformer.spattn", "strided", 3072),  # Child et al. 2019, CIFAR-10: 3072
    ("sparse_transformer.spattn", "fixed", 12288),  # Child et al. 2019, enwik8: 12,288
    ("sparse_transformer.spattn", "strided_transformer", 3072),
    ("streaming_llm.spattn", "streaming", 65536),  # Xiao et al. 2023: far past the cache
    ("streaming_llm.spattn", "streaming_llama", 65536),
]


@pytest.mark.parametrize("file, name, n", PAPER_SIZES, ids=[f"{x[1]}-{x[2]}" for x in PAPER_SIZES])
def test_every_example_is_analysed_exactly_at_its_papers_size(file, name, n):
    program = load(EXAMPLES / file)
    subject = program.model(name) if name in program.models else program.pattern(name)
    report = analyze(subject, n)
    assert report.exact and report.bounds == {}
    assert report.diameter >= 1 and report.layers
    assert report.to_markdown() and report.to_json()
