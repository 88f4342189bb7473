"""The language-model loss: the logits over the full vocabulary, a chunked loss, kept outputs.

Full vocabulary (HF ``ForCausalLMLoss``, transformers/loss/loss_utils.py: ``logits.float()`` then
cross-entropy), per token per vocabulary entry, measured with a live-storage tracker: the forward
keeps the bf16 logits (2) and their fp32 copy (4) while log_softmax writes its fp32 output (4,
saved): peak 10 V, 4 V kept after the loss; the backward adds the nll gradient and log_softmax's
input gradient in fp32: 8 V more (memplan.estimate.coefficients LOGITS_*).

Chunked (a fused linear cross-entropy such as Liger's, liger_kernel/ops/fused_linear_cross_entropy.py,
``fused_linear_cross_entropy_forward``): the logits are never materialised. The loss runs over chunks
of ``next_power_of_2(ceil(BT / ceil(V / h)))`` tokens, computing each chunk's gradient in the forward;
it keeps ``grad_input`` (BT x h in the compute dtype) for the backward, and one chunk's logits are alive
at a time. Modelled from that code, not measured here.

Kept outputs: a loop that keeps the model output (``out = model(...); out.loss.backward()``) holds the
bf16 logits, and with ``output_hidden_states`` every layer's hidden state, through the backward.
Trainer's ``compute_loss`` returns the loss alone, so its outputs are freed first. accelerate's
``prepare`` under mixed precision converts the outputs to fp32 (``convert_outputs_to_fp32``), so an
accelerate loop keeps fp32 logits, 4 bytes x tokens x V (the bf16 ones are freed when the forward
returns; the forward's peak at the loss is unchanged).
"""

from __future__ import annotations

from memplan.estimate import coefficients as k
from memplan.estimate.context import Context
from memplan.spec.vocabulary import Component


def _tokens(ctx: Context) -> int:
    return ctx.plan.inputs.micro_batch * ctx.plan.inputs.text_tokens


def _chunked(ctx: Context) -> bool:
    return ctx.stack is not None and ctx.stack.chunked_loss and ctx.training


def _graph(ctx: Context) -> bool:
    return ctx.graph.get(Component.LLM, False)


def chunk_tokens(ctx: Context) -> int:
    """Liger's chunk: next power of two of ceil(BT / ceil(V / h))."""
    llm = ctx.profile.llm
    ratio = -(-llm.vocab_size // llm.hidden_size)
    chunk = -(-_tokens(ctx) // ratio)
    return 1 << max(chunk - 1, 0).bit_length()


def logits_saved_bytes(ctx: Context) -> int:
    """Kept for the backward once the loss is computed: log_softmax's fp32 output, 4 x tokens x V;
    chunked: grad_input, compute bytes x tokens x h."""
    if not _graph(ctx):
        return 0
    if _chunked(ctx):
        return ctx.compute_bytes * _tokens(ctx) * ctx.profile.llm.hidden_size
    return k.LOGITS_SAVED * _tokens(ctx) * ctx.profile.llm.vocab_size


def logits_forward_peak_bytes(ctx: Context) -> int:
    """Alive at the loss in training: 10 x tokens x V; chunked: one chunk's logits in fp32 and their
    gradient, 8 x chunk x V."""
    if _chunked(ctx):
        return 8 * chunk_tokens(ctx) * ctx.profile.llm.vocab_size
    return k.LOGITS_FORWARD_PEAK * _tokens(ctx) * ctx.profile.llm.vocab_size


def logits_backward_bytes(ctx: Context) -> int:
    """The loss backward's spike: 8 x tokens x V in fp32; chunked: nothing (the gradient was made
    in the forward and is only scaled)."""
    if _chunked(ctx):
        return 0
    return k.LOGITS_BACKWARD_EXTRA * _tokens(ctx) * ctx.profile.llm.vocab_size


def largest_block_bytes(ctx: Context) -> int:
    """The largest single tensor of a step: the logits in fp32 for the loss, 4 x tokens x V (bf16,
    2 x tokens x V, in inference; chunked: one chunk, 4 x chunk x V). Under a full card a freed block
    this size is split for smaller requests and part of it is stranded
    (memplan.estimate.overhead.needed_bytes). Profiles without an LLM: 0."""
    if ctx.profile.llm is None:
        return 0
    if _chunked(ctx):
        return 4 * chunk_tokens(ctx) * ctx.profile.llm.vocab_size
    per_value = 4 if ctx.training else ctx.compute_bytes
    return per_value * _tokens(ctx) * ctx.profile.llm.vocab_size


def kept_logits_bytes(ctx: Context) -> int:
    """The logits a loop keeps through backward: compute bytes x tokens x V, 4 when accelerate converts
    the outputs to fp32 (chunked: none)."""
    if not (ctx.stack is not None and ctx.stack.keeps_outputs and ctx.training and _graph(ctx)) or _chunked(ctx):
        return 0
    per_value = 4 if ctx.stack.outputs_fp32 else ctx.compute_bytes
    return per_value * _tokens(ctx) * ctx.profile.llm.vocab_size


def keeps_hidden_states(ctx: Context) -> bool:
    """Whether the kept output holds every layer's hidden state (output_hidden_states)."""
    return (ctx.stack is not None and ctx.stack.keeps_outputs and ctx.training and _graph(ctx)
            and ctx.plan.inputs.output_hidden_states)
