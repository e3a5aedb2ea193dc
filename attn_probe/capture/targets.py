"""Targets: the one scalar per example that an explanation explains.

Why this exists: "importance for the prediction" means nothing until the scalar is fixed. Libraries differ
silently (logit or probability? the predicted class or class 1? the next token at which position, with
left padding?), and users get opposite signs from two tools on the same input. Here a :class:`Target` says
what the scalar is, :meth:`Target.describe` says it in a sentence including what *higher* means
(importance is positive for a token that pushes the target up), and :func:`resolve` fixes every choice
the model's output makes (the predicted class, the top next token, the predicting position of each
example) so that gradient methods and perturbation curves differentiate and re-evaluate *the same* scalar:

    target = Target.next_token(" Paris", tokenizer)
    resolved = resolve(target, model(**inputs).logits, inputs["attention_mask"])   # [batch, n, vocab]
    resolved.values                       # [batch] log p(' Paris' | prefix) at each example's last token
    target_value(resolved, new_logits)    # [batch], differentiable, same tokens and positions

Kinds (``logits`` ``[batch, classes]`` for classifiers, ``[batch, n, vocab]`` for language models):

===========================  ==========  =====================================================================
kind                         logits      scalar (higher means)
===========================  ==========  =====================================================================
``class_logit``              classes     ``logits[c]`` (more evidence for class c)
``class_probability``        classes     ``softmax(logits)[c]``
``class_log_probability``    classes     ``log_softmax(logits)[c]``
``next_token_log_prob``      LM          ``log_softmax(logits[pos])[t]`` (the model expects token t more)
``token_contrast``           both        ``logits[(pos,) a] - logits[(pos,) b]`` (the model prefers a over b)
===========================  ==========  =====================================================================

A class or token left as None is the model's choice (argmax), fixed per example by :func:`resolve`.
``position`` counts *real* tokens (the ``token_index`` of :class:`~attn_probe.capture.tokens.TokenizedBatch`),
not padded columns: None (or -1) is the last real token of each example, whatever the padding side;
``position=p`` reads the logits at the p-th real token, which predict the token after it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any, Literal

import pandas as pd
import torch

TargetKind = Literal[
    "class_logit", "class_probability", "class_log_probability", "next_token_log_prob", "token_contrast"
]
_CLASS_KINDS = ("class_logit", "class_probability", "class_log_probability")
_KINDS = (*_CLASS_KINDS, "next_token_log_prob", "token_contrast")


# ----------------------------------------------------------------------------------------------------
# Target
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """What scalar to explain. Build one with the constructors (``Target.class_logit()``, ...).

    Fields: ``kind``; ``class_index`` (None = the predicted class); ``token_id`` (None = the model's top
    next token); ``contrast_ids`` (token or class ids ``(a, b)``: ``logit(a) - logit(b)``); ``position`` (the
    predicting real token of language-model targets, None = the last one); ``names``: readable names of
    the class / token(s), used only by :meth:`describe`. (The contrast field is ``contrast_ids`` because
    ``Target.contrast`` is its constructor.)
    """

    kind: TargetKind
    class_index: int | None = None
    token_id: int | None = None
    contrast_ids: tuple[int, int] | None = None
    position: int | None = None
    names: tuple[str | None, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown target kind {self.kind!r}; expected one of {', '.join(_KINDS)}")
        is_class = self.kind in _CLASS_KINDS
        _check_optional_index("class_index", self.class_index)
        _check_optional_index("token_id", self.token_id)
        if self.class_index is not None and not is_class:
            raise ValueError(f"class_index applies to class targets, not to {self.kind!r}")
        if self.token_id is not None and self.kind != "next_token_log_prob":
            raise ValueError(f"token_id applies to next_token_log_prob targets, not to {self.kind!r}")
        if self.kind == "token_contrast":
            if self.contrast_ids is None or len(self.contrast_ids) != 2:
                raise ValueError(
                    "a token_contrast target needs contrast_ids=(a, b): the ids whose logits are subtracted"
                )
            a, b = self.contrast_ids
            _check_optional_index("contrast_ids[0]", a)
            _check_optional_index("contrast_ids[1]", b)
            if a == b:
                raise ValueError(f"contrast compares id {a} with itself: the difference is always 0")
            object.__setattr__(self, "contrast_ids", (int(a), int(b)))
        elif self.contrast_ids is not None:
            raise ValueError(f"contrast_ids applies to token_contrast targets, not to {self.kind!r}")
        if self.position is not None:
            if isinstance(self.position, bool) or not isinstance(self.position, int):
                raise TypeError(f"position must be an int or None, got {type(self.position).__name__}")
            if is_class:
                raise ValueError(
                    f"position applies to language-model targets; a {self.kind} target reads [batch, classes] logits"
                )
        if self.names is not None:
            object.__setattr__(self, "names", tuple(None if n is None else str(n) for n in self.names))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def class_logit(cls, index: int | None = None, *, name: str | None = None) -> Target:
        """The logit of class ``index`` (None: the predicted class of each example).

        ``Target.class_logit(1, name="positive")``: higher = more evidence for 'positive'.
        """
        return cls("class_logit", class_index=index, names=None if name is None else (name,))

    @classmethod
    def class_probability(cls, index: int | None = None, *, name: str | None = None) -> Target:
        """The softmax probability of class ``index`` (None: the predicted class). Saturates near 0 and 1,
        where gradients vanish: prefer the logit or log-probability for gradient methods."""
        return cls("class_probability", class_index=index, names=None if name is None else (name,))

    @classmethod
    def class_log_probability(cls, index: int | None = None, *, name: str | None = None) -> Target:
        """The log-softmax of class ``index`` (None: the predicted class)."""
        return cls("class_log_probability", class_index=index, names=None if name is None else (name,))

    @classmethod
    def next_token(
        cls, token: int | str | None = None, tokenizer: Any = None, *, position: int | None = None
    ) -> Target:
        """The log-probability of the next token ``token`` (None: the model's top token per example).

        ``token`` is an id, or a string that must be exactly one token for ``tokenizer``: with byte-level
        BPE (GPT-2, Llama 3) a word inside a sentence carries its leading space, so ask for ``" Paris"``,
        not ``"Paris"`` (a warning says so when both exist). A raw vocabulary string (``"ĠParis"``) works too.

            Target.next_token(" Paris", tokenizer)            # at the last real token of each example
            Target.next_token(3681, position=4)               # predicted from the 5th real token
        """
        token_id, name = _one_token(token, tokenizer, "next_token") if token is not None else (None, None)
        return cls("next_token_log_prob", token_id=token_id, position=position, names=None if name is None else (name,))

    @classmethod
    def contrast(cls, a: int | str, b: int | str, tokenizer: Any = None, *, position: int | None = None) -> Target:
        """``logit(a) - logit(b)``: positive when the model prefers ``a`` over ``b``.

        For language models ``a``/``b`` are tokens (ids or single-token strings, mind the leading space:
        ``Target.contrast(" are", " is", tokenizer)``), read at ``position``; for classifiers they are class
        indices (``Target.contrast(1, 0)``: the log-odds of class 1 against class 0).
        """
        id_a, name_a = _one_token(a, tokenizer, "contrast")
        id_b, name_b = _one_token(b, tokenizer, "contrast")
        names = None if name_a is None and name_b is None else (name_a, name_b)
        return cls("token_contrast", contrast_ids=(id_a, id_b), position=position, names=names)

    # ------------------------------------------------------------------ words
    @property
    def is_classification(self) -> bool:
        """True for targets that only read classification logits ``[batch, classes]``."""
        return self.kind in _CLASS_KINDS

    def describe(self) -> str:
        """A sentence saying what the scalar is and what *higher* means.

        >>> Target.next_token(1234, position=None).describe()
        'log-probability of next token id 1234 at the last position; higher = the model expects it more'
        """
        where = _where(self.position)
        if self.kind in _CLASS_KINDS:
            what = {
                "class_logit": "logit",
                "class_probability": "probability",
                "class_log_probability": "log-probability",
            }[self.kind]
            cls_name = "the predicted class" if self.class_index is None else _class_name(self.class_index, self.names)
            return f"{what} of {cls_name}; higher = more evidence for {_it(cls_name)}"
        if self.kind == "next_token_log_prob":
            token = "the model's top next token" if self.token_id is None else _token_name(self.token_id, self.names)
            if self.token_id is None:
                return f"log-probability of {token} {where}; higher = the model expects it more"
            return f"log-probability of next token {token} {where}; higher = the model expects it more"
        a, b = self.contrast_ids  # type: ignore[misc]
        names = self.names if self.names is not None else (None, None)
        name_a, name_b = _token_name(a, names[:1]), _token_name(b, names[1:])
        named = any(n is not None for n in names)  # built from tokens: a language-model target
        place = f" {where}" if named or self.position is not None else " (at the last position, for a language model)"
        return f"logit({name_a}) - logit({name_b}){place}; positive = the model prefers {name_a} over {name_b}"


def _check_optional_index(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _where(position: int | None) -> str:
    if position is None or position == -1:
        return "at the last position"
    if position >= 0:
        return f"at token_index {position}"
    return f"at token_index {position} (counted back from the last real token, which is -1)"


def _it(name: str) -> str:
    return "it" if name == "the predicted class" else name


def _class_name(index: int, names: tuple[str | None, ...] | None) -> str:
    return f"class {index} ({names[0]!r})" if names and names[0] is not None else f"class {index}"


def _token_name(token_id: int, names: tuple[str | None, ...] | None) -> str:
    return repr(names[0]) if names and names[0] is not None else f"id {token_id}"


def _one_token(token: int | str, tokenizer: Any, where: str) -> tuple[int, str | None]:
    """``(id, readable name)`` of a token given as an id or as a string that must be one token."""
    if isinstance(token, bool):
        raise TypeError(f"{where}: a token is an int id or a string, got a bool")
    if isinstance(token, int):
        _check_optional_index("token id", token)
        return token, _decode(tokenizer, token) if tokenizer is not None else None
    if not isinstance(token, str):
        raise TypeError(f"{where}: a token is an int id or a string, got {type(token).__name__}")
    if tokenizer is None:
        raise ValueError(
            f"{where}: the token {token!r} is text, which needs the tokenizer to become an id: "
            f"pass tokenizer=..., or give the id"
        )
    ids = list(tokenizer(token, add_special_tokens=False)["input_ids"])
    if len(ids) == 1:
        token_id = int(ids[0])
        _warn_leading_space(tokenizer, token, token_id)
        return token_id, _decode(tokenizer, token_id)
    vocab_id = tokenizer.get_vocab().get(token) if hasattr(tokenizer, "get_vocab") else None
    if vocab_id is not None:  # a raw vocabulary string such as 'Ġare' or '##bel'
        return int(vocab_id), _decode(tokenizer, int(vocab_id))
    if not ids:
        raise ValueError(f"{where}: {token!r} tokenizes to no token at all; a target needs exactly one token")
    pieces = tokenizer.convert_ids_to_tokens(ids)
    hint = ""
    if not token[:1].isspace():
        spaced = list(tokenizer(" " + token, add_special_tokens=False)["input_ids"])
        if len(spaced) == 1:
            hint = f"; with a leading space, {' ' + token!r} is one token (id {spaced[0]})"
    raise ValueError(
        f"{where}: {token!r} is {len(ids)} tokens for this tokenizer, {pieces} (ids {ids}), but a target needs "
        f"exactly one token{hint}: pass a single piece or its id"
    )


def _warn_leading_space(tokenizer: Any, token: str, token_id: int) -> None:
    """Warn when ``token`` lacks the leading space that its in-sentence variant carries (byte-level BPE)."""
    if token[:1].isspace():
        return
    spaced = list(tokenizer(" " + token, add_special_tokens=False)["input_ids"])
    if len(spaced) == 1 and int(spaced[0]) != token_id:
        warnings.warn(
            f"{token!r} is token {token_id} without a leading space; after another word this tokenizer uses "
            f"{' ' + token!r} (token {spaced[0]}). Pass {' ' + token!r} if that is the token you mean.",
            UserWarning,
            stacklevel=4,
        )


def _decode(tokenizer: Any, token_id: int) -> str | None:
    try:
        return str(tokenizer.decode([token_id]))
    except Exception:  # an id outside the vocabulary: resolve() reports it against the logits
        return None


# ----------------------------------------------------------------------------------------------------
# resolving against logits
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ResolvedTarget:
    """A :class:`Target` with every per-example choice fixed, so the same scalar can be recomputed.

    ``ids [batch]``: the class index or token id per example (for a contrast, ``a``); ``other_ids [batch]``:
    ``b`` of a contrast, else None; ``positions [batch]``: the padded column whose logits are read (None
    for classification logits); ``values [batch]``: the scalar on the logits it was resolved from
    (detached); ``chosen_by_model``: True where ``ids`` are the model's argmax (the target left them None);
    ``num_logits``: classes or vocabulary size, and ``max_position`` the largest column read (-1 for
    classification), kept so that :func:`target_value` validates new logits without a device sync.
    """

    target: Target
    ids: torch.Tensor  # [batch] long
    other_ids: torch.Tensor | None  # [batch] long, contrasts only
    positions: torch.Tensor | None  # [batch] long, padded columns; None for [batch, classes] logits
    values: torch.Tensor  # [batch] float, detached
    chosen_by_model: bool
    num_logits: int
    max_position: int = -1

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def is_sequence(self) -> bool:
        """True when resolved on language-model logits ``[batch, n, vocab]``."""
        return self.positions is not None

    def take(self, index: torch.Tensor | list[int]) -> ResolvedTarget:
        """The rows ``index`` (with repeats): for a forward pass on a batch built from these examples,
        e.g. ``take([0, 0, 1, 1])`` for two perturbed copies of each of two examples."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.ids.device)
        positions = None if self.positions is None else self.positions[idx]
        return replace(
            self,
            ids=self.ids[idx],
            other_ids=None if self.other_ids is None else self.other_ids[idx],
            positions=positions,
            values=self.values[idx],
            max_position=-1 if positions is None or not len(positions) else int(positions.max()),
        )

    def repeat_interleave(self, repeats: int) -> ResolvedTarget:
        """Each example ``repeats`` times in a row (``[a, a, b, b]``): copies of one example side by side."""
        return self.take(torch.arange(len(self), device=self.ids.device).repeat_interleave(repeats))

    def tile(self, repeats: int) -> ResolvedTarget:
        """The whole batch ``repeats`` times (``[a, b, a, b]``): how captum expands inputs for IG steps."""
        return self.take(torch.arange(len(self), device=self.ids.device).repeat(repeats))

    def to(self, device: torch.device | str) -> ResolvedTarget:
        return replace(
            self,
            ids=self.ids.to(device),
            other_ids=None if self.other_ids is None else self.other_ids.to(device),
            positions=None if self.positions is None else self.positions.to(device),
            values=self.values.to(device),
        )

    def descriptions(self, tokenizer: Any = None) -> list[str]:
        """One sentence per example, naming the class or token that was fixed (decoded with ``tokenizer``)."""
        out = []
        for i in range(len(self)):
            fixed = self._fixed(i, tokenizer)
            out.append(fixed.describe() + (" (chosen by the model)" if self.chosen_by_model else ""))
        return out

    def to_frame(self, tokenizer: Any = None) -> pd.DataFrame:
        """Tidy table, one row per example: ``example_id, target, id, other_id, position, value, description``."""
        n = len(self)
        return pd.DataFrame(
            {
                "example_id": range(n),
                "target": [self.target.kind] * n,
                "id": self.ids.tolist(),
                "other_id": pd.array([None] * n if self.other_ids is None else self.other_ids.tolist(), dtype="Int64"),
                "position": pd.array([None] * n if self.positions is None else self.positions.tolist(), dtype="Int64"),
                "value": self.values.detach().float().cpu().tolist(),
                "description": self.descriptions(tokenizer),
            }
        )

    def _fixed(self, i: int, tokenizer: Any) -> Target:
        t, value = self.target, int(self.ids[i])
        if t.kind in _CLASS_KINDS:
            return replace(t, class_index=value)
        if t.kind == "next_token_log_prob":
            names = t.names if t.token_id is not None else None
            if names is None and tokenizer is not None:
                name = _decode(tokenizer, value)
                names = None if name is None else (name,)
            return replace(t, token_id=value, names=names)
        if t.names is None and tokenizer is not None:  # a contrast given as ids: name the tokens
            return replace(t, names=tuple(_decode(tokenizer, int(x)) for x in t.contrast_ids))  # type: ignore[union-attr]
        return t


def resolve(target: Target, logits: Any, attention_mask: Any = None) -> ResolvedTarget:
    """Fix the target's choices on ``logits`` and compute its value per example.

    Args:
        target: what to explain.
        logits: ``[batch, classes]`` (a classifier) or ``[batch, n, vocab]`` (a language model), or a model
            output with a ``.logits`` attribute.
        attention_mask: ``[batch, n]``, 1/True = real token (or a batch with ``.attention_mask``). Needed by
            language-model targets to find each example's last real token under left or right padding;
            None means no padding. Ignored for classification logits.

    The predicted class / top next token is taken per example here, once: a gradient method then explains
    that fixed scalar, and a perturbation curve follows it, even where the perturbed model changes its mind.

        resolved = resolve(Target.class_logit(), model(**inputs).logits)
        resolved.ids       # the predicted class of each example
    """
    if not isinstance(target, Target):
        raise TypeError(f"target must be a Target (e.g. Target.class_logit()), got {type(target).__name__}")
    logits = _as_logits(logits)
    _check_kind_fits(target, logits)
    size = int(logits.shape[-1])
    batch = int(logits.shape[0])
    device = logits.device

    positions = None
    if logits.dim() == 3:
        mask = _as_mask(attention_mask, logits)
        positions = _predicting_columns(mask, target.position)  # [batch]
    scores = _at_positions(logits, positions).detach()  # [batch, size]

    other_ids = None
    chosen_by_model = False
    if target.kind in _CLASS_KINDS:
        if target.kind != "class_logit" and size < 2:
            raise ValueError(
                f"a {target.kind} target needs at least 2 classes, but the logits have {size} (a single-logit "
                "head): use Target.class_logit(0), or apply a sigmoid yourself"
            )
        fixed = target.class_index
        _check_in_range("class index", fixed, size, "classes")
        chosen_by_model = fixed is None
        ids = scores.argmax(-1) if fixed is None else torch.full((batch,), fixed, dtype=torch.long, device=device)
    elif target.kind == "next_token_log_prob":
        fixed = target.token_id
        _check_in_range("token id", fixed, size, "vocabulary entries")
        chosen_by_model = fixed is None
        ids = scores.argmax(-1) if fixed is None else torch.full((batch,), fixed, dtype=torch.long, device=device)
    else:
        a, b = target.contrast_ids  # type: ignore[misc]
        what, unit = ("token id", "vocabulary entries") if logits.dim() == 3 else ("class index", "classes")
        _check_in_range(what, a, size, unit)
        _check_in_range(what, b, size, unit)
        ids = torch.full((batch,), a, dtype=torch.long, device=device)
        other_ids = torch.full((batch,), b, dtype=torch.long, device=device)

    values = _scalar(target.kind, scores, ids, other_ids).detach()
    return ResolvedTarget(
        target=target,
        ids=ids.long(),
        other_ids=other_ids,
        positions=positions,
        values=values,
        chosen_by_model=chosen_by_model,
        num_logits=size,
        max_position=-1 if positions is None else int(positions.max()),
    )


def target_value(resolved: ResolvedTarget, logits: Any) -> torch.Tensor:
    """The target's scalar on new ``logits``, with the resolved ids and positions: ``[batch]``.

    Differentiable (gradients flow back into ``logits``), for gradient methods and for faithfulness curves.
    ``logits`` must have the layout the target was resolved on; with a different batch, use
    :meth:`ResolvedTarget.take` / :meth:`ResolvedTarget.repeat_interleave` first.
    """
    if not isinstance(resolved, ResolvedTarget):
        raise TypeError(f"expected a ResolvedTarget (from resolve(...)), got {type(resolved).__name__}")
    logits = _as_logits(logits)
    if (logits.dim() == 3) != resolved.is_sequence:
        have = "language-model [batch, n, vocab]" if logits.dim() == 3 else "classification [batch, classes]"
        want = "language-model [batch, n, vocab]" if resolved.is_sequence else "classification [batch, classes]"
        raise ValueError(f"the target was resolved on {want} logits, but these are {have} {tuple(logits.shape)}")
    if logits.shape[0] != len(resolved):
        raise ValueError(
            f"logits hold {logits.shape[0]} examples, the resolved target {len(resolved)}: select matching rows "
            "with resolved.take(index) or resolved.repeat_interleave(k)"
        )
    if logits.shape[-1] != resolved.num_logits:
        raise ValueError(
            f"logits have {logits.shape[-1]} entries in their last dimension, but the target was resolved on "
            f"{resolved.num_logits}: the same model head is needed"
        )
    if resolved.is_sequence and resolved.max_position >= logits.shape[1]:
        raise ValueError(
            f"the target reads column {resolved.max_position}, outside these logits of length {logits.shape[1]}"
        )
    target = resolved.to(logits.device)
    scores = _at_positions(logits, target.positions)  # [batch, size]
    return _scalar(resolved.target.kind, scores, target.ids, target.other_ids)


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def _as_logits(logits: Any) -> torch.Tensor:
    logits = getattr(logits, "logits", logits)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a tensor (or a model output with .logits), got {type(logits).__name__}")
    if not logits.dtype.is_floating_point:
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    if logits.dim() not in (2, 3):
        raise ValueError(
            f"logits have shape {tuple(logits.shape)}; expected [batch, classes] (a classifier) or "
            "[batch, n, vocab] (a language model)"
        )
    if logits.shape[0] == 0 or logits.shape[-1] == 0:
        raise ValueError(f"logits of shape {tuple(logits.shape)} hold no examples or no classes")
    return logits


def _check_kind_fits(target: Target, logits: torch.Tensor) -> None:
    shape = tuple(logits.shape)
    if target.kind in _CLASS_KINDS and logits.dim() == 3:
        raise ValueError(
            f"{target.kind} needs classification logits [batch, classes], but these have shape {shape}, "
            "which is language-model logits [batch, n, vocab]: use Target.next_token(...) or Target.contrast(...)"
        )
    if target.kind == "next_token_log_prob" and logits.dim() == 2:
        raise ValueError(
            f"next_token_log_prob needs language-model logits [batch, n, vocab], but these have shape {shape}, "
            "which is classification logits [batch, classes]: use Target.class_logit(...) or similar"
        )
    if target.kind == "token_contrast" and logits.dim() == 2 and target.position is not None:
        raise ValueError(
            f"this contrast has position={target.position}, which applies to language-model logits; "
            f"these are classification logits {shape}"
        )


def _check_in_range(what: str, value: int | None, size: int, unit: str) -> None:
    if value is not None and not 0 <= value < size:
        raise ValueError(
            f"{what} {value} is out of range: the logits have {size} {unit}, so valid ids are 0..{size - 1}"
        )


def _as_mask(attention_mask: Any, logits: torch.Tensor) -> torch.Tensor:
    """Boolean ``[batch, n]`` mask of real tokens on the logits' device."""
    batch, n = int(logits.shape[0]), int(logits.shape[1])
    if attention_mask is None:
        return torch.ones(batch, n, dtype=torch.bool, device=logits.device)
    mask = getattr(attention_mask, "attention_mask", attention_mask)
    mask = torch.as_tensor(mask, device=logits.device)
    if tuple(mask.shape) != (batch, n):
        raise ValueError(
            f"attention_mask has shape {tuple(mask.shape)}, but the logits are [batch={batch}, n={n}, vocab]: "
            "pass the [batch, n] mask the model was run with"
        )
    if mask.dtype != torch.bool:
        if ((mask != 0) & (mask != 1)).any():
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
        mask = mask != 0
    return mask


def _predicting_columns(mask: torch.Tensor, position: int | None) -> torch.Tensor:
    """``[batch]`` padded column of the ``position``-th real token of each example (None: the last)."""
    lengths = mask.sum(dim=1)  # [batch]
    if bool((lengths == 0).any()):
        empty = torch.nonzero(lengths == 0).flatten().tolist()
        raise ValueError(f"example(s) {empty} have no real token (all padding): there is no position to predict from")
    p = -1 if position is None else position
    rank = lengths + p if p < 0 else torch.full_like(lengths, p)  # [batch], 0-based among real tokens
    bad = (rank < 0) | (rank >= lengths)
    if bool(bad.any()):
        i = int(torch.nonzero(bad).flatten()[0])
        length = int(lengths[i])
        raise ValueError(
            f"position {p} does not exist in example {i}, which has {length} real token(s): "
            f"valid positions are {-length}..{length - 1}"
        )
    hit = (mask.long().cumsum(dim=1) == (rank + 1)[:, None]) & mask  # [batch, n], one True per row
    return hit.long().argmax(dim=1)


def _at_positions(logits: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """``[batch, size]``: the logits themselves, or each example's row at its predicting column."""
    if positions is None:
        return logits
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, positions.to(logits.device)]


def _scalar(kind: str, scores: torch.Tensor, ids: torch.Tensor, other_ids: torch.Tensor | None) -> torch.Tensor:
    """``[batch]`` target values from ``scores [batch, size]``; half precision is computed in float32."""
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    if kind == "class_probability":
        scores = scores.softmax(dim=-1)
    elif kind in ("class_log_probability", "next_token_log_prob"):
        scores = scores.log_softmax(dim=-1)
    picked = scores.gather(-1, ids[:, None]).squeeze(-1)
    if kind == "token_contrast":
        assert other_ids is not None
        picked = picked - scores.gather(-1, other_ids[:, None]).squeeze(-1)
    return picked
