"""A BERT-family encoder in Flax Linen, laid out so that HF *ForMaskedLM weights map onto it 1:1.

Families (ModelConfig.family): 'bert', and 'roberta' / 'xlm-roberta', which are the same
post-LayerNorm encoder with three differences that live in the config, not in the layers: their
position ids start at pad_token_id + 1 (padding tokens take position pad_token_id, as HF's
create_position_ids_from_input_ids), a single token-type row, and LayerNorm epsilon 1e-5.

Every parameter names its axes by meaning (`vocab`, `embed`, `heads`, `kv`, `mlp`, `layers`, ...);
retromae_jax/trainers/sharding.py's rules table decides where each axis lives on the mesh.
Attention projections keep heads as their own axis ([embed, heads, kv]) so that tensor
parallelism can split heads without reshapes.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from retromae_jax.models import attention
from retromae_jax.models import vocab_loss

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static model hyper-parameters (hashable, so it can be a Flax module attribute)."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-12
  dtype: Any = jnp.float32  # compute dtype
  param_dtype: Any = jnp.float32
  query_stream: str = "embeddings"  # decoder query stream: 'embeddings' | 'raw'
  remat: str = "none"  # encoder layers in the backward pass: 'none' | 'full' | 'dots'
  family: str = "bert"  # 'bert' | 'roberta' | 'xlm-roberta' (FAMILIES)
  pad_token_id: int = 0  # RoBERTa-style families count positions from pad_token_id + 1
  attention: str = "auto"  # models/attention.py: 'auto' | 'dense' | 'chunked' | 'cudnn'
  attention_block: int = 512  # queries per block of 'chunked' attention
  sentence_vector: str = "cls"  # the decoder's h: 'cls' | 'mean' (retromae_jax/models/pooling.py)
  vocab_head: str = "fused"  # the projection's gradients: 'fused' | 'autodiff' (vocab_logits)
  # The training loss over the vocabulary: 'chunked' (models/vocab_loss.py: blocks of positions,
  # never all logits at once) | 'plain' (all logits, then the cross-entropy).
  vocab_loss: str = "plain"
  vocab_loss_block: int = 128  # positions per row in one block of the chunked loss

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def position_offset(self) -> int:
    """Row of the position table that token 0 uses: 0 for BERT, pad_token_id + 1 for RoBERTa."""
    return self.pad_token_id + 1 if self.family in OFFSET_POSITIONS else 0

  @property
  def max_length(self) -> int:
    """The longest input the position table covers."""
    return self.max_position_embeddings - self.position_offset


FAMILIES = ("bert", "roberta", "xlm-roberta")
OFFSET_POSITIONS = ("roberta", "xlm-roberta")  # positions offset by padding_idx + 1
DEFAULT_PAD = {"bert": 0, "roberta": 1, "xlm-roberta": 1}  # HF's tokenizers' pad ids


def _normal(cfg: ModelConfig, names):
  return nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), names)


def _zeros(names):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _layer_norm(cfg: ModelConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
      bias_init=_zeros(("embed",)))


class Embeddings(nn.Module):
  """Word + position + token-type embeddings, LayerNorm, dropout (BERT's embedding module)."""
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    embed = lambda n, name, axis: nn.Embed(
        n, cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
        embedding_init=_normal(cfg, (axis, "embed")))
    self.word_embeddings = embed(cfg.vocab_size, "word_embeddings", "vocab")
    self.position_embeddings = embed(cfg.max_position_embeddings, "position_embeddings", "pos")
    self.token_type_embeddings = embed(cfg.type_vocab_size, "token_type_embeddings", "type")
    self.layer_norm = _layer_norm(cfg, "LayerNorm")
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def __call__(self, input_ids: Array, deterministic: bool,
               position_ids: Array | None = None) -> Array:
    if position_ids is None and self.cfg.family in OFFSET_POSITIONS:
      # HF RoBERTa: real tokens count 0, 1, ... (then offset); padding tokens take the row just
      # below the offset (padding_idx itself), whose embedding HF keeps at zero.
      real = input_ids != self.cfg.pad_token_id
      position_ids = jnp.where(real, jnp.cumsum(real, axis=-1) - 1, -1)
    return self.from_vectors(self.word_embeddings(input_ids), deterministic, position_ids)

  def positions(self, position_ids: Array) -> Array:
    """Position embeddings of 0-based token positions (the family's offset added here)."""
    return self.position_embeddings(position_ids + self.cfg.position_offset)

  def from_vectors(self, vectors: Array, deterministic: bool,
                   position_ids: Array | None = None) -> Array:
    """HF's `embeddings(inputs_embeds=vectors)`: adds position and type-0 embeddings.

    Positions are 0..L-1 unless `position_ids` [B, L] says otherwise (an encoder that reads only
    the unmasked tokens keeps their original positions); they are 0-based for every family.
    """
    if position_ids is None:
      position_ids = jnp.arange(vectors.shape[-2])
    x = vectors + self.positions(position_ids)
    # Type 0 (shape [1] in: flax's Embed special-cases one-row tables, which RoBERTa's are).
    x = x + self.token_type_embeddings(jnp.zeros((1,), jnp.int32))[0]
    x = self.layer_norm(x)
    return self.dropout(x, deterministic=deterministic)


class _Projection(nn.Module):
  """A dense projection whose kernel keeps its multi-axis shape (e.g. [embed, heads, kv]).

  nn.DenseGeneral initialises a flattened 2-D kernel and reshapes it afterwards, which breaks
  logical sharding annotations of rank 3; this creates the kernel in its final shape.
  """
  cfg: ModelConfig
  kernel_shape: tuple
  kernel_axes: tuple
  equation: str  # einsum of (input, kernel)
  bias_ndim: int  # the bias spans the kernel's trailing (output) axes

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg
    kernel = self.param("kernel", _normal(cfg, self.kernel_axes), self.kernel_shape,
                        cfg.param_dtype)
    bias = self.param("bias", _zeros(self.kernel_axes[-self.bias_ndim:]),
                      self.kernel_shape[-self.bias_ndim:], cfg.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=cfg.dtype)
    return jnp.einsum(self.equation, x, kernel) + bias


def attention_sublayer(module: nn.Module, cfg: ModelConfig, query_stream: Array, kv_stream: Array,
                       mask: Array, deterministic: bool, prefix: str = "") -> Array:
  """Multi-head attention, output projection, dropout, residual on the QUERY stream, LayerNorm.

  Called from a compact method: its parameters live in `module`'s scope, named `{prefix}query`,
  `{prefix}key`, `{prefix}value`, `{prefix}attention_output`, `{prefix}attention_LayerNorm`
  (with no prefix, the names HF BERT weights map onto).
  """
  heads = (cfg.num_heads, cfg.head_dim)
  proj = lambda name: _Projection(cfg, (cfg.hidden_size, *heads), ("embed", "heads", "kv"),
                                  "...d,dhk->...hk", bias_ndim=2, name=prefix + name)
  q = proj("query")(query_stream)
  k = proj("key")(kv_stream)
  v = proj("value")(kv_stream)
  q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
  dropout_rng = None
  if not deterministic and cfg.attention_dropout_rate > 0:
    dropout_rng = module.make_rng("dropout")
  ctx = attention.attend(
      q, k, v, mask, implementation=cfg.attention, block=cfg.attention_block,
      dropout_rng=dropout_rng, dropout_rate=cfg.attention_dropout_rate,
      deterministic=deterministic, dtype=cfg.dtype)
  attn_out = _Projection(cfg, (*heads, cfg.hidden_size), ("heads", "kv", "embed"),
                         "...hk,hkd->...d", bias_ndim=1, name=prefix + "attention_output")(ctx)
  attn_out = nn.Dropout(cfg.dropout_rate)(attn_out, deterministic=deterministic)
  x = _layer_norm(cfg, prefix + "attention_LayerNorm")(attn_out + query_stream)
  return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def feed_forward_sublayer(cfg: ModelConfig, x: Array, deterministic: bool) -> Array:
  """BERT's feed-forward block with its residual and LayerNorm (called from a compact method)."""
  h = nn.Dense(cfg.intermediate_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
               kernel_init=_normal(cfg, ("embed", "mlp")), bias_init=_zeros(("mlp",)),
               name="intermediate")(x)
  h = nn.gelu(h, approximate=False)  # HF 'gelu' is the exact erf form
  h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
  h = nn.Dense(cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
               kernel_init=_normal(cfg, ("mlp", "embed")), bias_init=_zeros(("embed",)),
               name="output")(h)
  h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
  x = _layer_norm(cfg, "output_LayerNorm")(h + x)
  return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class TransformerLayer(nn.Module):
  """A post-LayerNorm BERT layer whose queries may come from a different stream than keys/values.

  The encoder calls it with query_stream is kv_stream; RetroMAE's enhanced decoder passes
  H1 (sentence vector + positions) as queries and H2 (sentence vector + token embeddings) as
  keys/values, and the attention residual is added to the query stream, as in the references.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, query_stream: Array, kv_stream: Array, mask: Array,
               deterministic: bool) -> Array:
    x = attention_sublayer(self, self.cfg, query_stream, kv_stream, mask, deterministic)
    return feed_forward_sublayer(self.cfg, x, deterministic)


class _ScannedLayer(TransformerLayer):
  """Self-attention form of TransformerLayer with nn.scan's (carry, x) -> (carry, y) signature."""

  def __call__(self, x, mask, deterministic):  # pytype: disable=signature-mismatch
    return super().__call__(x, x, mask, deterministic), None


class BertModel(nn.Module):
  """Embeddings and the stack of encoder layers (one scanned layer: compile time independent of
  depth; parameters are stacked along a leading `layers` axis)."""
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.embeddings = Embeddings(cfg)
    layer = _ScannedLayer
    if cfg.remat != "none":
      # Recompute the layer in the backward pass instead of keeping its activations; 'dots'
      # keeps the weight matmuls' outputs (cheap to store, costly to redo).
      policy = (jax.checkpoint_policies.dots_with_no_batch_dims_saveable if cfg.remat == "dots"
                else None)
      layer = nn.remat(_ScannedLayer, policy=policy, prevent_cse=False, static_argnums=(3,))
    self.encoder = nn.scan(
        layer, variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast, nn.broadcast),
        length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"},
    )(cfg, name="encoder")

  def __call__(self, input_ids: Array, attention_mask: Array, deterministic: bool,
               position_ids: Array | None = None, segment_ids: Array | None = None) -> Array:
    """Returns the last hidden states [B, L, D] (no pooler: RetroMAE and BGE use CLS directly).

    Packed rows (data.pack) pass segment_ids [B, L] (k on the k-th document, 0 on padding) and
    position_ids restarting at 0 in each: tokens then attend only inside their own document.
    """
    x = self.embeddings(input_ids, deterministic, position_ids)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    if segment_ids is None:
      key_mask = attention_mask.astype(bool)[:, None, None, :]  # [B, 1 head, 1 query, L keys]
    else:
      key_mask = segment_mask(segment_ids)
    x, _ = self.encoder(x, key_mask, deterministic)
    return x


def segment_mask(segment_ids: Array) -> Array:
  """bool [B, 1, L, L]: query i may attend to key j of its own document (padding sees nothing),
  built on the device from the O(L) segment ids."""
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  return (same & (segment_ids > 0)[:, None, :])[:, None]


def segment_starts(positions: Array) -> Array:
  """int [B, L]: index of each token's [CLS] (its document's first token), from positions that
  restart at 0 in each document."""
  return jnp.arange(positions.shape[-1]) - positions


class MLMHead(nn.Module):
  """BERT's MLM head: dense D->D, GELU, LayerNorm, then the word embeddings (tied) plus a bias."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: Array, word_embeddings: Array, defer: bool = False):
    """Logits [..., V]; defer: instead the vocab_loss.Projection they would be computed from,
    for the chunked loss (no [..., V] array)."""
    cfg = self.cfg
    x = nn.Dense(cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                 kernel_init=_normal(cfg, ("embed", "hidden")), bias_init=_zeros(("hidden",)),
                 name="dense")(x)
    x = nn.gelu(x, approximate=False)
    x = _layer_norm(cfg, "LayerNorm")(x)
    bias = self.param("bias", _zeros(("vocab",)), (cfg.vocab_size,), cfg.param_dtype)
    if defer:
      return vocab_loss.Projection(x, word_embeddings.astype(cfg.dtype), bias,
                                   cfg.vocab_loss_block)
    return vocab_logits(x, word_embeddings.astype(cfg.dtype), bias, cfg.vocab_head)


VOCAB_HEADS = ("fused", "autodiff")


def vocab_logits(hidden: Array, embeddings: Array, bias: Array, gradients: str = "fused") -> Array:
  """float32 logits [..., V] = hidden [..., D] . embeddings [V, D]^T + bias [V].

  The product runs in the inputs' (compute) dtype; the softmax and cross-entropy that read the
  logits run in float32 whatever that dtype. Both `gradients` give the same numbers up to
  summation order: 'autodiff' is JAX's derivative of the einsum and the bias broadcast;
  'fused' computes them as plain 2-D dots (_projection_gradients), which XLA:CPU runs without
  transposing the [tokens, V] logit gradient and without its slow column reduction.
  """
  if gradients == "fused":
    return _projection_with_dot_gradients(hidden, embeddings, bias)
  if gradients == "autodiff":
    return _projection(hidden, embeddings, bias)
  raise ValueError(f"model.vocab_head: expected one of {', '.join(VOCAB_HEADS)}, "
                   f"got {gradients!r}")


def _projection(hidden: Array, embeddings: Array, bias: Array) -> Array:
  logits = jnp.einsum("...d,vd->...v", hidden, embeddings)
  return logits.astype(jnp.float32) + bias.astype(jnp.float32)


@jax.custom_vjp
def _projection_with_dot_gradients(hidden: Array, embeddings: Array, bias: Array) -> Array:
  return _projection(hidden, embeddings, bias)


def _projection_forward(hidden, embeddings, bias):
  return _projection(hidden, embeddings, bias), (hidden, embeddings, bias)


def _projection_gradients(residuals, dlogits):
  """(d hidden, d embeddings, d bias) of the logits' cotangent [..., V] (float32).

  Tokens are flattened into one row axis N, so that both weight gradients contract over a
  leading axis of 2-D operands: XLA:CPU then calls one dot on the [N, V] gradient as it lies
  (contracting over (batch, length) of 3-D operands instead made it copy a transposed
  [V, N] first), and the bias gradient is a ones-vector dot (its column reduction of the same
  [N, V] array was ~15x slower). The dtypes are autodiff's: the products in the compute dtype,
  the bias gradient in float32.
  """
  hidden, embeddings, bias = residuals
  compute = jnp.result_type(hidden, embeddings)
  rows = dlogits.reshape(-1, dlogits.shape[-1])  # [N, V]
  over_rows = (((0,), (0,)), ((), ()))
  d_hidden = jnp.einsum("...v,vd->...d", dlogits.astype(compute), embeddings.astype(compute))
  d_embeddings = jax.lax.dot_general(rows.astype(compute),
                                     hidden.reshape(-1, hidden.shape[-1]).astype(compute),
                                     over_rows)  # [V, D]
  d_bias = jax.lax.dot_general(jnp.ones(rows.shape[:1], rows.dtype), rows, over_rows)
  return (d_hidden.astype(hidden.dtype), d_embeddings.astype(embeddings.dtype),
          d_bias.astype(bias.dtype))


_projection_with_dot_gradients.defvjp(_projection_forward, _projection_gradients)
