"""Small encoder classifiers whose ground truth is known by construction: weights set by hand, no training.

Two models share one vocabulary and one attention pattern, and differ only in whether that attention
carries the decision. Both are ordinary :class:`~attn_probe.attention.models.EncoderClassifier` models
(pre-norm, RMSNorm, [CLS] pooling), so capture, methods and ``explain()`` run on them unchanged.

    model, truth = attention_used()       # [CLS] attends to "key", the value carries it: the keyword decides
    model, truth = attention_ignored()    # every row attends to "key", the output reads only the first token
    inputs = truth.examples((8, 5, 11))   # {"input_ids", "attention_mask"}, right-padded
    truth.labels(inputs), truth.relevant(inputs), truth.attended(inputs)

**attention_used**: every head of every layer attends (almost one-hot, by hand-set query/key weights) to the
token ``key`` when it is present, and spreads evenly otherwise. Only head ``(0, 0)`` writes anything back:
its value reads "is ``key``" and its output projection writes it into a *signal* channel of the residual
stream. The classifier reads the signal at [CLS] against a threshold of half the one-hot value: class 1
("keyword present") iff [CLS] gives ``key`` more than half its weight. Erasing ``key`` flips the prediction;
permuting or uniformising the attention of head ``(0, 0)`` moves the weight off ``key`` and flips it too.

**attention_ignored**: the same query/key weights, so the attention maps point at ``key`` exactly as above,
and values that carry each token's identity; but every output projection is zero and the feed-forward
networks are zero, so no attention layer writes anything. The class is read from the first token's own
residual stream: ``yes`` at position 0 gives class 1, ``no`` gives class 0. Changing the attention in any
way changes nothing (exactly: the heads' outputs are multiplied by zero). This is the fair "attention is
misleading" case: attention points at token X (``key``), the output depends only on token Y (position 0).
Why Y sits at the pooled position: only attention moves information between positions (the embeddings,
norms and feed-forward networks act on each position alone), so a classifier that is invariant to every
change of its attention can only read the token at the position it pools.

Residual-stream layout (``embed_dim >= 8``): dim 0 a constant 1 on every token (the reference the threshold
is taken against), 1 "is key", 2 the signal written by the decisive head, 3 "is [CLS]", 4 "is yes", 5 "is
no", 6 "is [SEP]", and 7 onwards a fixed pattern that tells the filler words apart (read by no projection).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from attn_probe.attention.blocks import RMSNorm
from attn_probe.attention.models import EncoderClassifier, TransformerConfig
from attn_probe.attention.multi_head import MultiHeadAttention

PAD, CLS, SEP, KEY, YES, NO = 0, 1, 2, 3, 4, 5
FIRST_FILLER = 6
SPECIAL_NAMES = ("[PAD]", "[CLS]", "[SEP]", "key", "yes", "no")
# Residual dimensions (see the module docstring).
_ONE, _IS_KEY, _SIGNAL, _IS_CLS, _IS_YES, _IS_NO, _IS_SEP, _FIRST_FILLER_DIM = range(8)
# Logit difference between the classes at a confident decision: softmax puts ~0.998 on the winner.
_DECISION_MARGIN = 6.0


@dataclass(frozen=True)
class KnownTruth:
    """What a known model does, by construction.

    Fields:
        name: ``"attention_used"`` or ``"attention_ignored"``.
        vocab: token text by id (``vocab[3] == "key"``).
        description: the rule in one sentence.
        attended_token_id: the token every attention row concentrates on when present (``key``).
        decisive_position: the position whose token decides (0 for ``attention_ignored``), or None when the
            decisive token can be anywhere (``attention_used``: wherever ``key`` is).
        decisive_token_ids: the ids whose presence (used) or identity at ``decisive_position`` (ignored) decides.
        used_heads: the ``(layer, head)`` whose attention output carries the decision; empty when no head does.
        sharpness: logit gap between ``key`` and any other key in every attention row (weight on other keys
            is ``exp(-sharpness)`` relative to ``key``, in the first layer; later layers see a slightly
            smaller gap because the residual stream has grown).
    """

    name: Literal["attention_used", "attention_ignored"]
    vocab: tuple[str, ...]
    description: str
    attended_token_id: int
    decisive_position: int | None
    decisive_token_ids: tuple[int, ...]
    used_heads: tuple[tuple[int, int], ...]
    sharpness: float

    @property
    def filler_ids(self) -> range:
        return range(FIRST_FILLER, len(self.vocab))

    def token_id(self, text: str) -> int:
        """The id of token ``text`` (``"key"``, ``"[CLS]"``, ``"w7"``)."""
        if text not in self.vocab:
            raise ValueError(f"no token {text!r} in this vocabulary; tokens are {', '.join(self.vocab)}")
        return self.vocab.index(text)

    def examples(
        self,
        lengths: Sequence[int] = (8, 5, 11),
        *,
        labels: Sequence[int] | None = None,
        seed: int = 0,
    ) -> dict[str, torch.Tensor]:
        """A right-padded batch ``{"input_ids", "attention_mask"}`` ``[batch, max(lengths)]``.

        ``lengths``: real tokens per example, the first token and the final [SEP] included (at least 3).
        ``labels``: the class each example should have (default alternating 1, 0, 1, ...).

        - ``attention_used``: ``[CLS] w .. w [SEP]``; class 1 examples hold one ``key`` at a random position
          between the first token and [SEP], class 0 examples none.
        - ``attention_ignored``: ``yes|no w .. key .. w [SEP]``; every example holds one ``key`` (so the
          attention has the same focus in both classes), the first token is ``yes`` for class 1, ``no`` for 0.

        Fillers and the keyword's position are drawn from ``seed``, per example in turn.
        """
        lengths = [int(n) for n in lengths]
        if not lengths:
            raise ValueError("lengths is empty: give the number of real tokens of each example, e.g. (8, 5)")
        if min(lengths) < 3:
            raise ValueError(
                f"lengths {lengths}: every example needs at least 3 tokens (first token, keyword or filler, [SEP])"
            )
        if labels is None:
            labels = [1 - i % 2 for i in range(len(lengths))]
        labels = [int(label) for label in labels]
        if len(labels) != len(lengths):
            raise ValueError(f"{len(labels)} labels for {len(lengths)} lengths: give one label per example")
        if any(label not in (0, 1) for label in labels):
            raise ValueError(f"labels must be 0 or 1, got {labels}")
        generator = torch.Generator().manual_seed(seed)
        width = max(lengths)
        input_ids = torch.full((len(lengths), width), PAD, dtype=torch.long)
        attention_mask = torch.zeros(len(lengths), width, dtype=torch.long)
        fillers = torch.tensor(self.filler_ids)
        for row, (length, label) in enumerate(zip(lengths, labels, strict=True)):
            words = fillers[torch.randint(len(fillers), (length,), generator=generator)]
            keyword_at = int(torch.randint(1, length - 1, (1,), generator=generator))
            if self.name == "attention_used":
                words[0] = CLS
                if label == 1:
                    words[keyword_at] = KEY
            else:
                words[0] = YES if label == 1 else NO
                words[keyword_at] = KEY
            words[length - 1] = SEP
            input_ids[row, :length] = words
            attention_mask[row, :length] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def labels(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[batch]`` the class the rule gives (what the model predicts on well-formed inputs)."""
        input_ids, real = _ids_and_mask(inputs)
        if self.name == "attention_used":
            return ((input_ids == KEY) & real).any(dim=1).long()
        return (input_ids[:, 0] == YES).long()

    def relevant(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[batch, n]`` bool: the tokens the output depends on (a faithful explanation ranks them first)."""
        input_ids, real = _ids_and_mask(inputs)
        if self.name == "attention_used":
            return (input_ids == KEY) & real
        relevant = torch.zeros_like(real)
        relevant[:, 0] = real[:, 0]
        return relevant

    def attended(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[batch, n]`` bool: the tokens the attention concentrates on (``key``, where present)."""
        input_ids, real = _ids_and_mask(inputs)
        return (input_ids == self.attended_token_id) & real


def attention_used(
    *, num_layers: int = 2, num_heads: int = 2, embed_dim: int = 16, vocab_size: int = 16, sharpness: float = 25.0
) -> tuple[EncoderClassifier, KnownTruth]:
    """A classifier whose decision flows through the attended token: class 1 iff ``key`` is present.

    Head ``(layer 0, head 0)`` attends from [CLS] to ``key`` (weight ``>= 1 - n * exp(-sharpness)``), its value
    carries "is key", its output projection writes it into the signal channel, and the classifier compares
    the signal at [CLS] with half its one-hot value. Every other head attends the same way but writes nothing.
    Returns ``(model in eval mode, truth)``.
    """
    model, truth = _build("attention_used", num_layers, num_heads, embed_dim, vocab_size, sharpness)
    return model, truth


def attention_ignored(
    *, num_layers: int = 2, num_heads: int = 2, embed_dim: int = 16, vocab_size: int = 16, sharpness: float = 25.0
) -> tuple[EncoderClassifier, KnownTruth]:
    """A classifier whose attention points at ``key`` while the class is the first token (``yes`` / ``no``).

    Every head of every layer attends to ``key`` exactly as in :func:`attention_used` and its values carry
    token identity, but every output projection (and feed-forward network) is zero: permuting, uniformising or
    replacing any attention leaves the logits exactly unchanged. Returns ``(model in eval mode, truth)``.
    """
    return _build("attention_ignored", num_layers, num_heads, embed_dim, vocab_size, sharpness)


# ----------------------------------------------------------------------------------------------------
# construction
# ----------------------------------------------------------------------------------------------------
def _build(
    name: Literal["attention_used", "attention_ignored"],
    num_layers: int,
    num_heads: int,
    embed_dim: int,
    vocab_size: int,
    sharpness: float,
) -> tuple[EncoderClassifier, KnownTruth]:
    if num_layers < 1 or num_heads < 1:
        raise ValueError(f"need at least one layer and one head, got num_layers={num_layers}, num_heads={num_heads}")
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}: pick a divisor")
    head_dim = embed_dim // num_heads
    if embed_dim < _FIRST_FILLER_DIM + 1 or head_dim < 2:
        raise ValueError(
            f"embed_dim {embed_dim} with {num_heads} heads is too small: the residual layout needs embed_dim >= 8 "
            "and each head at least 2 dimensions (the value of head 0 reads dimension 1, 'is key')"
        )
    if vocab_size < FIRST_FILLER + 2:
        raise ValueError(f"vocab_size {vocab_size} leaves fewer than 2 filler words: use at least {FIRST_FILLER + 2}")
    if not 5.0 <= sharpness <= 60.0:
        # Below ~5 the attention is not concentrated; above ~60 the weight of other keys could underflow to 0 in
        # later layers and analyses would take those keys for masked ones (interventions read support from > 0).
        raise ValueError(f"sharpness {sharpness} is outside 5..60: the logit gap must concentrate without underflow")

    config = TransformerConfig(
        vocab_size=vocab_size,
        embed_dim=embed_dim,
        num_heads=num_heads,
        num_layers=num_layers,
        ffn_dim=embed_dim,
        position="none",  # the truth is about content: no position term may tilt the attention
        prenorm=True,
        norm="rmsnorm",
        norm_eps=1e-6,
        embedding_norm=False,
        mlp="gelu",
        bias=True,
        num_classes=2,
        pooler=False,
        pad_token_id=PAD,
    )
    model = EncoderClassifier(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        _set_embeddings(model, vocab_size, embed_dim)
        for module in model.modules():
            if isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
        used_heads = ((0, 0),) if name == "attention_used" else ()
        for layer_index, layer in enumerate(model.encoder.layers):
            _set_attention(layer.attention, embed_dim, num_heads, head_dim, sharpness)
            if (layer_index, 0) in used_heads:
                # Head 0's value dimension 1 holds "is key" / rms(x); rms of the key embedding (e0 + e1) is
                # sqrt(2 / embed_dim), so this gain writes exactly the weight [CLS] gives "key" into the signal.
                layer.attention.out_proj.weight[_SIGNAL, _IS_KEY] = math.sqrt(2.0 / embed_dim)
        _set_classifier(model, name)
    vocab = SPECIAL_NAMES + tuple(f"w{i}" for i in range(FIRST_FILLER, vocab_size))
    if name == "attention_used":
        truth = KnownTruth(
            name=name,
            vocab=vocab,
            description="class 1 iff the token 'key' is present; head (0, 0) carries it from 'key' to [CLS]",
            attended_token_id=KEY,
            decisive_position=None,
            decisive_token_ids=(KEY,),
            used_heads=used_heads,
            sharpness=sharpness,
        )
    else:
        truth = KnownTruth(
            name=name,
            vocab=vocab,
            description="class 1 iff the first token is 'yes'; every head attends to 'key' and writes nothing",
            attended_token_id=KEY,
            decisive_position=0,
            decisive_token_ids=(YES, NO),
            used_heads=used_heads,
            sharpness=sharpness,
        )
    return model.eval(), truth


def _set_embeddings(model: EncoderClassifier, vocab_size: int, embed_dim: int) -> None:
    tokens = model.encoder.embed.tokens.weight  # [vocab, embed]
    tokens[:, _ONE] = 1.0  # every token, [PAD] included: an erased token is a plain "nothing" token
    for token, dim in ((KEY, _IS_KEY), (CLS, _IS_CLS), (YES, _IS_YES), (NO, _IS_NO), (SEP, _IS_SEP)):
        tokens[token, dim] = 1.0
    # Fillers differ in dimensions no projection reads: distinct tokens, same attention, same output.
    pattern = torch.Generator().manual_seed(0)
    shape = (vocab_size - FIRST_FILLER, embed_dim - _FIRST_FILLER_DIM)
    tokens[FIRST_FILLER:, _FIRST_FILLER_DIM:] = 0.5 * torch.randn(shape, generator=pattern)


def _set_attention(
    attention: MultiHeadAttention, embed_dim: int, num_heads: int, head_dim: int, sharpness: float
) -> None:
    """Every query is the same constant vector (bias only); a key is large only for "is key".

    logit(query, key j) = scale * q_bias * k_gain * xn_j[is key], with xn the RMS-normalised residual. For
    the key embedding ``e0 + e1`` in the first layer ``xn[is key] = sqrt(embed_dim / 2)``, so the gains below
    make the gap exactly ``sharpness`` there.
    """
    scale = attention.scale  # 1 / sqrt(head_dim)
    normalised_key = math.sqrt(embed_dim / 2.0)
    query_gain = math.sqrt(sharpness)
    key_gain = sharpness / (scale * query_gain * normalised_key)
    for head in range(num_heads):
        offset = head * head_dim
        attention.q_proj.bias[offset] = query_gain
        attention.k_proj.weight[offset, _IS_KEY] = key_gain
        # Values carry the token's identity (the first head_dim residual dimensions): what a head *would*
        # pass on; whether it does is the output projection's choice.
        for d in range(head_dim):
            attention.v_proj.weight[offset + d, d] = 1.0


def _set_classifier(model: EncoderClassifier, name: str) -> None:
    weight = model.classifier.weight  # [2, embed]
    # pooled = RMS-normalised [CLS] (or first-token) residual; both readouts are scale-free ratios.
    if name == "attention_used":
        # logit1 - logit0 = g * (signal - 0.5 * one) / rms; at [CLS] rms is about sqrt(3 / embed_dim) when the
        # signal is 1 and sqrt(2 / embed_dim) when it is 0: g = 2 * margin * rms gives about +-margin.
        embed_dim = weight.shape[1]
        gain = 2.0 * _DECISION_MARGIN * math.sqrt(2.5 / embed_dim)
        readout = torch.zeros(embed_dim)
        readout[_SIGNAL], readout[_ONE] = gain, -0.5 * gain
    else:
        # logit1 - logit0 = g * (is_yes - is_no) / rms, rms = sqrt(2 / embed_dim) for "yes"/"no" alone.
        embed_dim = weight.shape[1]
        gain = _DECISION_MARGIN * math.sqrt(2.0 / embed_dim)
        readout = torch.zeros(embed_dim)
        readout[_IS_YES], readout[_IS_NO] = gain, -gain
    weight[1] = readout / 2
    weight[0] = -readout / 2


def _ids_and_mask(inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if "input_ids" not in inputs:
        raise ValueError(f"inputs have no 'input_ids' (got keys {sorted(inputs)}): pass what truth.examples() returns")
    input_ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    real = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.bool()
    return input_ids, real
