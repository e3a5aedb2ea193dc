"""Small Transformers built from our attention: an encoder classifier and a causal decoder LM.

They are a model family like any other for the probe, and the lab where the ground truth is known:
every layout choice needed to load BERT-style and Llama-style weights exactly is a config field, so
the same code reproduces those models (see ``from_hf``) or trains a toy one from scratch.

Hook points: ``embed.hook_tokens`` and ``embed.hook_output`` ``[batch, n, embed]``, then per layer
``layers.{i}.hook_*`` and ``layers.{i}.attention.hook_*`` (see ``blocks`` and ``multi_head``).

Efficient attention: ``TransformerConfig(attention="sliding", attention_options={"window": 16,
"global_tokens": 1})``, ``attention="block_sparse"`` (``block_size``, ``stride``, ``global_tokens``) or
``attention="linear"`` (``chunk_size``) gives every layer that kind (see ``make_attention_kind``).
``output_attentions=True`` still returns dense ``[batch, heads, n, n]`` weights: zeros outside a sparse
pattern, the implied row-normalised kernel for linear attention.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from attn_probe.attention.blocks import FeedForward, TransformerBlock, make_norm
from attn_probe.attention.hooks import HookPoint
from attn_probe.attention.linear import LINEAR_POSITIONS
from attn_probe.attention.masks import normalize_mask
from attn_probe.attention.multi_head import MultiHeadAttention, make_attention_kind
from attn_probe.attention.position import POSITION_VARIANTS, PositionEncoding, make_position


@dataclass
class TransformerConfig:
    """Shape and layout of a small Transformer. Defaults give a BERT-like post-norm encoder."""

    vocab_size: int = 64
    embed_dim: int = 64
    num_heads: int = 4
    num_layers: int = 2
    ffn_dim: int = 128
    num_kv_heads: int | None = None
    head_dim: int | None = None
    position: str = "learned"
    position_options: dict[str, Any] = field(default_factory=dict)
    max_positions: int = 512
    type_vocab_size: int = 0  # BERT's segment embeddings; 0 = none
    norm: str = "layernorm"  # or "rmsnorm"
    norm_eps: float = 1e-12
    prenorm: bool = False  # False: BERT's post-norm; True: Llama's pre-norm with a final norm
    embedding_norm: bool = True  # BERT normalises the embedding sum
    mlp: str = "gelu"  # or "swiglu"
    bias: bool = True  # on the attention projections (and the MLP unless mlp_bias says otherwise)
    mlp_bias: bool | None = None  # None: same as `bias`
    dropout: float = 0.0
    attention_dropout: float = 0.0
    num_classes: int = 2
    pooler: bool = True  # BERT's dense + tanh on [CLS] before the classifier
    tie_embeddings: bool = False
    pad_token_id: int = 0
    # "full", "sliding", "block_sparse" or "linear", and its options (window, global_tokens, block_size,
    # stride, chunk_size): see attn_probe.attention.make_attention_kind
    attention: str = "full"
    attention_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.position not in POSITION_VARIANTS:
            raise ValueError(f"unknown position '{self.position}'; choose one of {', '.join(POSITION_VARIANTS)}")
        make_attention_kind(self.attention, **self.attention_options)  # explains a bad kind or option
        if self.attention == "linear":
            if self.position not in LINEAR_POSITIONS:
                raise ValueError(
                    f"linear attention cannot use position {self.position!r}: it adds a term to softmax logits, "
                    f"which kernel attention does not have; choose one of {', '.join(LINEAR_POSITIONS)}"
                )
            if self.attention_dropout:
                raise ValueError("linear attention has no attention-weight dropout: set attention_dropout=0")
        if self.embed_dim % self.num_heads and self.head_dim is None:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.embed_dim // self.num_heads

    @property
    def resolved_mlp_bias(self) -> bool:
        return self.bias if self.mlp_bias is None else self.mlp_bias

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelOutput:
    """What our models return; the tuples are filled when asked for, like Hugging Face's outputs.

    ``hidden_states``: ``num_layers + 1`` tensors ``[batch, n, embed]`` (embeddings, then each layer);
    ``attentions``: ``num_layers`` tensors ``[batch, heads, n, n]`` (dense for every attention kind).
    """

    logits: torch.Tensor
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class Embeddings(nn.Module):
    """Token (+ segment) (+ absolute position) embeddings, optionally normalised."""

    def __init__(self, config: TransformerConfig, position: PositionEncoding | None) -> None:
        super().__init__()
        self.tokens = nn.Embedding(config.vocab_size, config.embed_dim)
        self.segments = nn.Embedding(config.type_vocab_size, config.embed_dim) if config.type_vocab_size else None
        self.position = position  # only an input-level variant lives here
        self.norm = make_norm(config.norm, config.embed_dim, config.norm_eps) if config.embedding_norm else None
        self.dropout = nn.Dropout(config.dropout)
        self.hook_tokens = HookPoint("[batch, n, embed]")
        self.hook_output = HookPoint("[batch, n, embed]")

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.hook_tokens(self.tokens(input_ids))  # [batch, n, embed]
        if self.segments is not None:
            segment_ids = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            x = x + self.segments(segment_ids)
        if self.position is not None:
            x = self.position.embed(x, positions)
        if self.norm is not None:
            x = self.norm(x)
        return self.hook_output(self.dropout(x))


class TransformerStack(nn.Module):
    """Embeddings and layers; bidirectional for an encoder, causal for a decoder."""

    def __init__(self, config: TransformerConfig, *, causal: bool) -> None:
        super().__init__()
        self.config = config
        self.causal = causal
        head_dim = config.resolved_head_dim

        def position_module() -> PositionEncoding | None:
            return make_position(
                config.position,
                embed_dim=config.embed_dim,
                num_heads=config.num_heads,
                head_dim=head_dim,
                max_positions=config.max_positions,
                causal=causal,
                **config.position_options,
            )

        input_position = position_module()
        if input_position is not None and input_position.acts_on != "input":
            input_position = None
        self.embed = Embeddings(config, input_position)
        self.layers = nn.ModuleList()
        kind = make_attention_kind(config.attention, **config.attention_options)  # frozen: shared by the layers
        for _ in range(config.num_layers):
            layer_position = None if input_position is not None else position_module()
            attention = MultiHeadAttention(
                config.embed_dim,
                config.num_heads,
                position=layer_position,
                dropout=config.attention_dropout,
                bias=config.bias,
                num_kv_heads=config.num_kv_heads,
                head_dim=config.head_dim,
                kind=kind,
            )
            self.layers.append(
                TransformerBlock(
                    attention,
                    FeedForward(config.embed_dim, config.ffn_dim, config.mlp, bias=config.resolved_mlp_bias),
                    make_norm(config.norm, config.embed_dim, config.norm_eps),
                    make_norm(config.norm, config.embed_dim, config.norm_eps),
                    prenorm=config.prenorm,
                    dropout=config.dropout,
                )
            )
        self.final_norm = make_norm(config.norm, config.embed_dim, config.norm_eps) if config.prenorm else None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        token_type_ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, n], got shape {tuple(input_ids.shape)}")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise ValueError(
                f"input_ids hold ids outside 0..{self.config.vocab_size - 1}: "
                "was the input tokenized for another model?"
            )
        if positions is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # [n]
        if attention_mask is not None:  # checked and made boolean once, not once per layer
            batch, length = input_ids.shape
            attention_mask = normalize_mask(attention_mask.to(input_ids.device), batch, length, length)
        x = self.embed(input_ids, positions, token_type_ids)  # [batch, n, embed]
        hidden_states = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        for layer in self.layers:
            x, weights = layer(
                x, mask=attention_mask, causal=self.causal, positions=positions, need_weights=output_attentions
            )
            if hidden_states is not None:
                hidden_states.append(x)
            if attentions is not None:
                attentions.append(weights)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return (
            x,
            tuple(hidden_states) if hidden_states is not None else None,
            tuple(attentions) if attentions is not None else None,
        )


class EncoderClassifier(nn.Module):
    """Bidirectional encoder that classifies the sequence from its first token ([CLS] pooling)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = TransformerStack(config, causal=False)
        self.pooler = nn.Linear(config.embed_dim, config.embed_dim) if config.pooler else None
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.embed_dim, config.num_classes)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        token_type_ids: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        """``input_ids [batch, n]`` -> ``logits [batch, num_classes]``; mask: 1 = real token."""
        last, hidden_states, attentions = self.encoder(
            input_ids,
            attention_mask,
            token_type_ids=token_type_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        pooled = last[:, 0]  # [batch, embed]: the [CLS] position
        if self.pooler is not None:
            pooled = torch.tanh(self.pooler(pooled))
        logits = self.classifier(self.dropout(pooled))  # [batch, num_classes]
        return ModelOutput(logits, last, hidden_states, attentions)


class DecoderLM(nn.Module):
    """Causal decoder that predicts the next token at every position."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.decoder = TransformerStack(config, causal=True)
        self.lm_head = nn.Linear(config.embed_dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.decoder.embed.tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        positions: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        """``input_ids [batch, n]`` -> ``logits [batch, n, vocab]`` for the token after each position."""
        last, hidden_states, attentions = self.decoder(
            input_ids,
            attention_mask,
            positions=positions,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        return ModelOutput(self.lm_head(last), last, hidden_states, attentions)
