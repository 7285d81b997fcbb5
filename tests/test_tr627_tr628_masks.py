"""TR627 (causal mask reversed or blocking the diagonal) and TR628 (padding masked by a 0 before softmax).

Correct masks in their usual spellings (nanoGPT buffers, nn.Transformer's square subsequent mask, additive
``triu(full(-inf), 1)`` masks, ``tril().bool()`` with ``torch.where``, HF-style ``(1 - m) * finfo.min``,
``arange`` comparisons, SDPA's reference) must stay quiet; the reversed ones must fire at the line that
builds the mask, the zero-masked scores at the line that masks them."""
from __future__ import annotations

import textwrap

import pytest

from torchreview_lab.engine import review_source


def _findings(code: str, rule: str):
    review = review_source(textwrap.dedent(code), "case.py", "research", select=[rule])
    assert not review.errors, review.errors
    return [f for f in review.findings if f.rule == rule]


H = """
    import math
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
"""

NANOGPT = H + """
    class CausalSelfAttention(nn.Module):
        def __init__(self, n_embd, n_head, block_size):
            super().__init__()
            self.c_attn = nn.Linear(n_embd, 3 * n_embd)
            self.n_head = n_head
            # causal mask to ensure that attention is only applied to the left in the input sequence
            self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size))
                                 .view(1, 1, block_size, block_size))

        def forward(self, x):
            B, T, C = x.size()
            q, k, v = self.c_attn(x).split(C, dim=2)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.bias[:, :, :T, :T] {op} 0, float('-inf'))
            att = F.softmax(att, dim=-1)
            return att @ v
"""

QUIET_627 = {
    "nanogpt": NANOGPT.replace("{op}", "=="),
    "karpathy-head": H + """
    class Head(nn.Module):
        '''one head of self-attention'''
        def __init__(self, block_size):
            super().__init__()
            self.register_buffer('tril', torch.tril(torch.ones(block_size, block_size)))

        def forward(self, q, k, v):
            B, T, C = q.shape
            wei = q @ k.transpose(-2, -1) * C ** -0.5
            wei = wei.masked_fill(self.tril[:T, :T] == 0, float('-inf'))  # decoder block
            return F.softmax(wei, dim=-1) @ v
    """,
    "nn-transformer": H + """
    def decode(model, src, tgt):
        tgt_mask = nn.Transformer.generate_square_subsequent_mask(tgt.size(0))
        return model(src, tgt, tgt_mask=tgt_mask)
    """,
    "tutorial-subsequent-mask": H + """
    def generate_square_subsequent_mask(sz):
        mask = (torch.triu(torch.ones(sz, sz)) == 1).transpose(0, 1)
        mask = mask.float().masked_fill(mask == 0, float('-inf')).masked_fill(mask == 1, float(0.0))
        return mask
    """,
    "lightning-demo": H + """
    def generate_square_subsequent_mask(size):
        '''Generate a square mask for the sequence to prevent future tokens from being seen.'''
        mask = torch.triu(torch.ones(size, size), diagonal=1)
        mask = mask.float().masked_fill(mask == 1, float("-inf")).masked_fill(mask == 0, 0.0)
        return mask
    """,
    "additive-full-triu": H + """
    def causal_attention(q, k, v):
        T = q.size(-2)
        mask = torch.triu(torch.full((T, T), float('-inf'), device=q.device), diagonal=1)
        s = q @ k.transpose(-2, -1) + mask
        return s.softmax(-1) @ v
    """,
    "tril-bool-where": H + """
    def causal_attention(s):
        T = s.size(-1)
        mask = torch.ones(T, T).tril().bool()
        return torch.where(mask, s, float('-inf')).softmax(-1)
    """,
    "hf-finfo-min": H + """
    def causal_decoder_mask(attention_mask, T, dtype):
        causal = torch.tril(torch.ones(T, T, dtype=dtype))
        pad = (1.0 - attention_mask[:, None, None, :]) * torch.finfo(dtype).min
        return pad + (1.0 - causal) * torch.finfo(dtype).min
    """,
    "sdpa-reference": H + """
    def sdpa(query, key, value, is_causal=False):
        L, S = query.size(-2), key.size(-2)
        attn_bias = torch.zeros(L, S, dtype=query.dtype)
        if is_causal:
            temp_mask = torch.ones(L, S, dtype=torch.bool).tril(diagonal=0)
            attn_bias.masked_fill_(temp_mask.logical_not(), float("-inf"))
        w = query @ key.transpose(-2, -1) + attn_bias
        return torch.softmax(w, dim=-1) @ value
    """,
    "timm-new-full": H + """
    def resolve_self_attn_mask(seq_len, attn, is_causal):
        if is_causal:
            return attn.new_full((seq_len, seq_len), float('-inf')).triu_(1)
        return None
    """,
    "arange-allowed": H + """
    def causal(scores):
        i = torch.arange(scores.size(-1), device=scores.device)
        allowed = i[:, None] >= i[None, :]
        return scores.masked_fill(~allowed, torch.finfo(scores.dtype).min).softmax(-1)
    """,
    "anti-causal-said": H + """
    class BackwardLM(nn.Module):
        '''Right-to-left decoder: each token attends to the tokens after it.'''
        def forward(self, s):
            T = s.size(-1)
            return s.masked_fill(torch.tril(torch.ones(T, T, dtype=torch.bool), -1), float('-inf')).softmax(-1)
    """,
    "keys-first-layout": H + """
    def causal_attention(q, k, v):
        T = q.size(-2)
        s = k @ q.transpose(-2, -1)     # (keys, queries)
        s = s.masked_fill(torch.tril(torch.ones(T, T), -1).bool(), float('-inf'))
        return s.softmax(-2)
    """,
    "mha-triu-bool": H + """
    class DecoderBlock(nn.Module):
        def __init__(self, d, h):
            super().__init__()
            self.attn = nn.MultiheadAttention(d, h, batch_first=True)

        def forward(self, x):
            T = x.size(1)
            mask = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=1)
            return self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]
    """,
    "sdpa-tril-bool": H + """
    def causal_sdpa(q, k, v):
        T = q.size(-2)
        allowed = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    """,
    "sdpa-float-mask-not-judged": H + """
    def causal_sdpa(q, k, v):
        T = q.size(-2)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(T, T).tril())
    """,
    "no-causal-intent": H + """
    def span_scores(start, end):
        s = start[:, :, None] + end[:, None, :]
        T = s.size(-1)
        return s.masked_fill(torch.tril(torch.ones(T, T, dtype=torch.bool), -1), float('-inf'))
    """,
}

FIRE_627 = {
    # (code, line of the finding, a word its problem must contain, fix after)
    "nanogpt-eq-1": (NANOGPT.replace("{op}", "!="), 13, "reversed-or-past",
                     "torch.triu(torch.ones(block_size, block_size), diagonal=1)"),
    "tril-bool-masked-fill": (H + """
    class CausalAttention(nn.Module):
        def forward(self, q, k):
            T = q.size(-2)
            causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device))
            s = (q @ k.transpose(-2, -1)).masked_fill(causal, float('-inf'))
            return s.softmax(-1)
    """, 10, "past", "torch.triu(torch.ones(T, T, dtype=torch.bool, device=q.device), diagonal=1)"),
    "triu-default-diagonal": (H + """
    def decoder_self_attention(s):
        T = s.size(-1)
        future = torch.triu(torch.ones(T, T)).bool()
        return torch.softmax(s.masked_fill(future, -1e9), dim=-1)
    """, 9, "first query", "torch.triu(torch.ones(T, T), diagonal=1)"),
    "tutorial-without-transpose": (H + """
    def generate_square_subsequent_mask(sz):
        mask = torch.triu(torch.ones(sz, sz)) == 1
        mask = mask.float().masked_fill(mask == 0, float('-inf')).masked_fill(mask == 1, float(0.0))
        return mask
    """, 8, "past", "torch.tril(torch.ones(sz, sz))"),
    "additive-tril-full": (H + """
    def causal_mask(T):
        return torch.tril(torch.full((T, T), float('-inf')), diagonal=-1)
    """, 8, "past", "torch.triu(torch.full((T, T), float('-inf')), diagonal=1)"),
    "where-keep-triu": (H + """
    def causal(s):
        T = s.size(-1)
        keep = torch.ones(T, T, device=s.device).triu(1).bool()
        return torch.where(keep, s, torch.finfo(s.dtype).min).softmax(-1)
    """, 9, "past", "torch.ones(T, T, device=s.device).tril()"),
    "hf-style-reversed": (H + """
    def causal_bias(T, dtype):
        m = torch.triu(torch.ones(T, T, dtype=dtype), diagonal=1)
        return (1.0 - m) * torch.finfo(dtype).min
    """, 8, "past", "torch.tril(torch.ones(T, T, dtype=dtype))"),
    "arange-reversed": (H + """
    def autoregressive_scores(s):
        i = torch.arange(s.size(-1))
        ok = i[:, None] <= i[None, :]
        return torch.where(ok, s, float('-inf'))
    """, 9, "past", "i[:, None] >= i[None, :]"),
    "aliases": ("""
    import torch as th
    from torch import tril, ones
    def gpt_attention(s):
        T = s.shape[-1]
        return th.masked_fill(s, tril(ones(T, T)).bool(), float('-inf')).softmax(-1)
    """, 6, "past", "triu(ones(T, T), diagonal=1)"),
    "mha-tril-bool": (H + """
    class DecoderBlock(nn.Module):
        def __init__(self, d, h):
            super().__init__()
            self.attn = nn.MultiheadAttention(d, h, batch_first=True)

        def forward(self, x):
            T = x.size(1)
            mask = torch.tril(torch.ones(T, T, device=x.device)).bool()   # MHA masks where True
            return self.attn(x, x, x, attn_mask=mask)[0]
    """, 14, "past", "torch.triu(torch.ones(T, T, device=x.device), diagonal=1)"),
    "sdpa-triu-bool": (H + """
    def causal_sdpa(q, k, v):
        T = q.size(-2)
        future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=future)
    """, 9, "past", "torch.ones(T, T, dtype=torch.bool, device=q.device).tril()"),
    "helper-method": (H + """
    class DecoderLayer(nn.Module):
        def _mask(self, T):
            return torch.ones(T, T, dtype=torch.bool).tril()
        def forward(self, s):
            return s.masked_fill(self._mask(s.size(-1)), float('-inf')).softmax(-1)
    """, 9, "past", "torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)"),
}


@pytest.mark.parametrize("name", sorted(QUIET_627))
def test_TR627_quiet(name):
    assert not _findings(QUIET_627[name], "TR627"), name


@pytest.mark.parametrize("name", sorted(FIRE_627))
def test_TR627_fires_at_mask(name):
    code, line, word, after = FIRE_627[name]
    found = _findings(code, "TR627")
    assert [f.line for f in found] == [line], (name, [(f.line, f.problem) for f in found])
    if word != "reversed-or-past":
        assert word in found[0].problem
    if after is not None:
        assert found[0].fix is not None and found[0].fix.after == after, found[0].fix


def test_TR627_wrong_use_of_right_buffer_reported_at_use():
    code = NANOGPT.replace("{op}", "==") + """
    class Bad(CausalSelfAttention):
        def forward(self, x):
            B, T, C = x.size()
            q, k, v = self.c_attn(x).split(C, dim=2)
            att = (q @ k.transpose(-2, -1)).masked_fill(self.bias[:, :, :T, :T] == 1, float('-inf'))
            return F.softmax(att, dim=-1) @ v
    """
    found = _findings(code, "TR627")
    assert [f.line for f in found] == [28]
    assert found[0].fix.after == "self.bias[:, :, :T, :T] != 1"


QUIET_628 = {
    "finfo-fill": H + """
    def attend(q, k, key_mask):
        s = q @ k.transpose(-2, -1)
        s = s.masked_fill(key_mask[:, None, None, :] == 0, torch.finfo(s.dtype).min)
        return s.softmax(-1)
    """,
    "bert-extended-mask": H + """
    def bert_like(scores, attention_mask, dtype):
        ext = (1.0 - attention_mask[:, None, None, :]) * torch.finfo(dtype).min
        scores = scores + ext
        return F.softmax(scores, dim=-1)
    """,
    "multiply-then-fill": H + """
    def f(scores, mask):
        scores = scores * mask
        scores = scores.masked_fill(mask == 0, -1e9)
        return F.softmax(scores, dim=-1)
    """,
    "inplace-neg-fill": H + """
    def f(scores, pad_mask):
        scores.masked_fill_(pad_mask, float("-inf"))
        return F.softmax(scores, dim=-1)
    """,
    "allennlp-renormalised": H + """
    def masked_softmax(vector, mask):
        result = F.softmax(vector * mask, dim=-1)
        result = result * mask
        return result / (result.sum(dim=-1, keepdim=True) + 1e-13)
    """,
    "whole-rows": H + """
    def token_log_probs(logits, mask):
        return F.log_softmax(logits * mask[:, :, None], dim=-1)
    """,
    "scale": H + """
    def f(scores, mask_scale, temperature):
        return F.softmax(scores * mask_scale / temperature, -1)
    """,
    "relu-not-mask": H + """
    def f(scores):
        return F.softmax(scores * (scores > 0), -1)
    """,
    "mask-plus-log": H + """
    def f(scores, mask):
        return (scores * mask + (mask + 1e-45).log()).softmax(-1)
    """,
    "additive-mask-after": H + """
    def f(scores, mask, attn_mask):
        scores = scores * mask
        scores = scores + attn_mask
        return scores.softmax(-1)
    """,
    "mask-token-embedding": H + """
    def f(x, mask_token):
        return (x * mask_token).softmax(-1)
    """,
    "output-masked": H + """
    def f(scores, mask):
        return F.softmax(scores, -1) * mask
    """,
}

FIRE_628 = {
    "attention-pool-module": (H + """
    class AttnPool(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.w = nn.Linear(d, 1)
            self.softmax = nn.Softmax(dim=1)

        def forward(self, h, mask):
            scores = self.w(h).squeeze(-1)
            scores = scores * mask
            alpha = self.softmax(scores)
            return (alpha.unsqueeze(-1) * h).sum(1)
    """, 15, "scores.masked_fill(mask == 0, torch.finfo(scores.dtype).min)"),
    "mha-key-padding": (H + """
    def attend(q, k, v, key_padding_mask):
        att = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
        att = att * key_padding_mask[:, None, None, :].float()
        return att.softmax(dim=-1) @ v
    """, 9, None),
    "inplace-zero-fill": (H + """
    def f(scores, pad_mask):
        scores.masked_fill_(pad_mask, 0)
        return F.softmax(scores, dim=-1)
    """, 8, "scores.masked_fill_(pad_mask, torch.finfo(scores.dtype).min)"),
    "comparison-mask": (H + """
    def policy(logits, legal):
        logits = logits * (legal > 0)
        return F.log_softmax(logits, -1)
    """, 8, None),
    "where-zeros-like": (H + """
    def f(scores, ids, pad_id):
        s = torch.where(ids == pad_id, torch.zeros_like(scores), scores)
        return s.log_softmax(-1)
    """, 8, "torch.where(ids == pad_id, torch.finfo(scores.dtype).min, scores)"),
    "masked-fill-eq-0": (H + """
    def pool(scores, attention_mask):
        scores = scores.masked_fill(attention_mask == 0, 0)
        return torch.logsumexp(scores, dim=1)
    """, 8, "scores.masked_fill(attention_mask == 0, torch.finfo(scores.dtype).min)"),
    "augassign": (H + """
    def f(s, mask):
        s *= mask.float()
        return torch.softmax(s, -1)
    """, 8, "s = s.masked_fill(mask.float() == 0, torch.finfo(s.dtype).min)"),
}


@pytest.mark.parametrize("name", sorted(QUIET_628))
def test_TR628_quiet(name):
    assert not _findings(QUIET_628[name], "TR628"), name


@pytest.mark.parametrize("name", sorted(FIRE_628))
def test_TR628_fires_at_masking(name):
    code, line, after = FIRE_628[name]
    found = _findings(code, "TR628")
    assert [f.line for f in found] == [line], (name, [(f.line, f.problem) for f in found])
    assert "exp(0) = 1" in found[0].problem
    if after is not None:
        assert found[0].fix.after == after, found[0].fix
