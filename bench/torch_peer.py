"""PyTorch benchmark peer: one RetroMAE pretraining step the way FlagEmbedding computes it.

A standalone re-implementation, written from the RetroMAE reference description (sections 1-3) (no
FlagEmbedding or RetroMAE source text was used), so that our JAX step can be timed side by side
with the reference's cost profile on the same machine. torch/transformers are bench-only
dependencies; nothing in retromae_jax imports this file, and this file imports nothing from it.

What one step computes (spec sections 1-2):
  * encoder: `transformers.BertForMaskedLM`, full-vocabulary logits at EVERY position and the HF
    MLM loss (labels -100 outside the encoder-masked positions), as the reference does;
  * h = final hidden state at [CLS];
  * enhanced decoder: one BertLayer-shaped layer (own module, same parameters and math) whose
    query stream is `bert.embeddings(inputs_embeds=h repeated over L)` and key/value stream is
    `bert.embeddings(original ids)` with position 0 replaced by h; the attention residual goes
    to the query stream; the position-specific [B, L, L] mask enters as an additive bias
    (finfo.min, never -inf); the shared MLM head `cls` scores all positions; CE with labels -100
    at [CLS], [SEP] and padding;
  * loss = enc + dec; AdamW (lr 1e-4, wd 0.01 off biases/LayerNorm, eps 1e-8) with linear
    warmup/decay, clip_grad_norm_ 1.0, fp32, dropout on (train mode).
The collator is per-example Python, like the reference's: whole-word masking at 0.30 with
80/10/10 corruption for the encoder; a pool of min(n, 128) whole-word masks at 0.50 for the
decoder, one pool draw per row, a dense [B, L, L] mask built from Python lists.
Text: docstrings of the Python standard library (parsed with `ast`, never imported) or a jsonl
file, tokenised with the shipped bert-base-uncased WordPiece tokenizer.json; as FlagEmbedding,
one text per example (truncated to seq_len - 2 ids), each batch padded to its longest example.
--text=full_rows instead glues the docstrings back to back into full rows: only a device for
timing equal slots (every row seq_len real tokens), not what FlagEmbedding feeds.

  python bench/torch_peer.py --batch_size=16 --seq_len=128 --steps=20 --warmup=3 [--mode=both] \
      [--text=documents|jsonl:PATH|full_rows]

The last line printed is one JSON object (train_tokens_per_s, step_s, collator_examples_per_s, ...).
"""

import argparse
import ast
import json
import math
import os
import platform
import random
import statistics
import sys
import sysconfig
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import tokenizers
import transformers
from transformers import BertConfig, BertForMaskedLM

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TOKENIZER = os.path.join(REPO, "retromae_jax", "data", "assets", "bert-base-uncased-wordpiece",
                                 "tokenizer.json")

# name -> (num_layers, hidden_size, num_heads, intermediate_size); same shapes as configs/base.py
SHAPES = {
    "smoke": (2, 128, 2, 512),
    "minilm": (6, 384, 12, 1536),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}


# --------------------------------------------------------------------------------------------
# Data: stdlib docstrings -> WordPiece ids -> packed chunks
# --------------------------------------------------------------------------------------------

def stdlib_docstrings():
  """Yields docstrings (module, class, function) of stdlib .py files in a fixed order."""
  root = sysconfig.get_paths()["stdlib"]
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames
                         if d not in ("site-packages", "dist-packages", "__pycache__"))
    for name in sorted(filenames):
      if not name.endswith(".py"):
        continue
      try:
        with open(os.path.join(dirpath, name), encoding="utf-8") as f:
          tree = ast.parse(f.read())
      except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        continue
      for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
          doc = ast.get_docstring(node)
          if doc and len(doc) > 40:
            yield doc


def document_examples(tokenizer, texts, max_body, needed, seed):
  """FlagEmbedding's examples: one text each, truncated to `max_body` ids (no specials), in a
  seeded random order (its RandomSampler); cycled when the corpus is smaller than `needed`."""
  examples = [e.ids[:max_body] for e in tokenizer.encode_batch(list(texts),
                                                               add_special_tokens=False)]
  examples = [e for e in examples if e]
  if not examples:
    raise RuntimeError("no text found")
  random.Random(seed).shuffle(examples)
  return [examples[i % len(examples)] for i in range(needed)]


def jsonl_texts(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line)["text"] for line in f if line.strip()]


def packed_chunks(tokenizer, chunk_len, needed):
  """`needed` chunks of exactly `chunk_len` ids (no specials): docstrings appended back to back
  and cut into blocks (spec section 3: text is packed up to max_seq_length - 2)."""
  chunks, buf = [], []
  for doc in stdlib_docstrings():
    buf.extend(tokenizer.encode(doc, add_special_tokens=False).ids)
    while len(buf) >= chunk_len:
      chunks.append(buf[:chunk_len])
      buf = buf[chunk_len:]
      if len(chunks) >= needed:
        return chunks
  if not chunks:
    raise RuntimeError("no stdlib docstrings found")
  while len(chunks) < needed:  # tiny stdlib: cycle
    chunks.append(chunks[len(chunks) % max(1, len(chunks))])
  return chunks


# --------------------------------------------------------------------------------------------
# Collator (per-example Python, the reference's cost profile)
# --------------------------------------------------------------------------------------------

class RetroMAECollator:

  def __init__(self, tokenizer, max_len, encoder_mask_ratio=0.30, decoder_mask_ratio=0.50,
               pool_cap=128):
    self.vocab = [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]
    self.vocab_size = len(self.vocab)
    self.cls_id = tokenizer.token_to_id("[CLS]")
    self.sep_id = tokenizer.token_to_id("[SEP]")
    self.pad_id = tokenizer.token_to_id("[PAD]")
    self.mask_id = tokenizer.token_to_id("[MASK]")
    self.special = {self.cls_id, self.sep_id, self.pad_id}
    self.max_len = max_len
    self.enc_p = encoder_mask_ratio
    self.dec_p = decoder_mask_ratio
    self.pool_cap = pool_cap

  def whole_word_mask(self, tokens, p):
    """Spec section 1: words from `##` continuation, skip [CLS]/[SEP], shuffle, budget
    k = max(1, round(n * p)) with n counting specials, greedy walk skipping overflowing words.
    Returns a 0/1 list of length n."""
    words = []
    for i, tok in enumerate(tokens):
      if tok == "[CLS]" or tok == "[SEP]":
        continue
      if words and tok.startswith("##"):
        words[-1].append(i)
      else:
        words.append([i])
    random.shuffle(words)
    budget = max(1, int(round(len(tokens) * p)))
    chosen = set()
    for word in words:
      if len(chosen) >= budget:
        break
      if len(chosen) + len(word) > budget:
        continue
      for i in word:
        chosen.add(i)
    return [1 if i in chosen else 0 for i in range(len(tokens))]

  def __call__(self, examples):
    """examples: lists of ids without specials. Returns a dict of torch tensors, padded to the
    batch's longest example (as FlagEmbedding's collator pads), at most max_len."""
    L = min(self.max_len, max(len(body) for body in examples) + 2)
    input_ids, attn, enc_mask_labels, dec_labels, dec_matrix = [], [], [], [], []
    for body in examples:
      ids = [self.cls_id] + list(body[:L - 2]) + [self.sep_id]
      n = len(ids)
      pad = L - n
      tokens = [self.vocab[t] for t in ids]

      enc_mask = self.whole_word_mask(tokens, self.enc_p)

      num = min(n, self.pool_cap)
      pool = [self.whole_word_mask(tokens, self.dec_p) for _ in range(num)]
      rows = []
      for i in range(n):
        m = list(pool[random.randint(0, num - 1)])
        m[i] = 1
        rows.append([1 - x for x in m] + [0] * pad)
      for _ in range(pad):
        rows.append([0] * L)

      labels = list(ids)
      labels[0] = -100
      labels[n - 1] = -100

      input_ids.append(ids + [self.pad_id] * pad)
      attn.append([1] * n + [0] * pad)
      enc_mask_labels.append(enc_mask + [0] * pad)
      dec_labels.append(labels + [-100] * pad)
      dec_matrix.append(rows)

    ids = torch.tensor(input_ids, dtype=torch.long)
    enc_ids, enc_labels = self.corrupt(ids, torch.tensor(enc_mask_labels, dtype=torch.long))
    return {
        "encoder_input_ids": enc_ids,
        "encoder_attention_mask": torch.tensor(attn, dtype=torch.long),
        "encoder_labels": enc_labels,
        "decoder_input_ids": ids,
        "decoder_attention_mask": torch.tensor(dec_matrix, dtype=torch.long),
        "decoder_labels": torch.tensor(dec_labels, dtype=torch.long),
    }

  def corrupt(self, ids, mask_labels):
    """80/10/10 on the chosen positions (batch-level torch ops, as HF's MLM collator does)."""
    labels = ids.clone()
    special = torch.zeros_like(ids, dtype=torch.bool)
    for s in self.special:
      special |= ids == s
    masked = mask_labels.bool() & ~special
    labels[~masked] = -100
    out = ids.clone()
    replaced = torch.bernoulli(torch.full(ids.shape, 0.8)).bool() & masked
    out[replaced] = self.mask_id
    rand = torch.bernoulli(torch.full(ids.shape, 0.5)).bool() & masked & ~replaced
    out[rand] = torch.randint(self.vocab_size, ids.shape, dtype=torch.long)[rand]
    return out, labels


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

class _SelfAttn(nn.Module):  # parameter names as in BertSelfAttention

  def __init__(self, cfg):
    super().__init__()
    d = cfg.hidden_size
    self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
    self.dropout = nn.Dropout(cfg.attention_probs_dropout_prob)


class _DenseLN(nn.Module):  # BertSelfOutput / BertOutput

  def __init__(self, d_in, d_out, cfg):
    super().__init__()
    self.dense = nn.Linear(d_in, d_out)
    self.LayerNorm = nn.LayerNorm(d_out, eps=cfg.layer_norm_eps)
    self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

  def forward(self, x, residual):
    return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _Attention(nn.Module):

  def __init__(self, cfg):
    super().__init__()
    self.self = _SelfAttn(cfg)
    self.output = _DenseLN(cfg.hidden_size, cfg.hidden_size, cfg)


class _Intermediate(nn.Module):

  def __init__(self, cfg):
    super().__init__()
    self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

  def forward(self, x):
    return F.gelu(self.dense(x))


class EnhancedDecoderLayer(nn.Module):
  """BertLayer-shaped (same parameter tree as transformers' BertLayer) with two input streams:
  Q from the query stream, K/V from the key/value stream, attention residual on the query
  stream, then the usual feed-forward block. Eager attention with an additive bias."""

  def __init__(self, cfg):
    super().__init__()
    self.num_heads = cfg.num_attention_heads
    self.head_dim = cfg.hidden_size // cfg.num_attention_heads
    self.attention = _Attention(cfg)
    self.intermediate = _Intermediate(cfg)
    self.output = _DenseLN(cfg.intermediate_size, cfg.hidden_size, cfg)
    for mod in self.modules():  # spec section 2: normal(0, initializer_range), LayerNorm 1/0
      if isinstance(mod, nn.Linear):
        nn.init.normal_(mod.weight, 0.0, cfg.initializer_range)
        nn.init.zeros_(mod.bias)
      elif isinstance(mod, nn.LayerNorm):
        nn.init.ones_(mod.weight)
        nn.init.zeros_(mod.bias)

  def _heads(self, x):
    b, l, _ = x.shape
    return x.view(b, l, self.num_heads, self.head_dim).transpose(1, 2)

  def forward(self, query_stream, kv_stream, bias):
    sa = self.attention.self
    q, k, v = self._heads(sa.query(query_stream)), self._heads(sa.key(kv_stream)), \
        self._heads(sa.value(kv_stream))
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + bias
    probs = sa.dropout(torch.softmax(scores, dim=-1))
    ctx = torch.matmul(probs, v).transpose(1, 2).reshape(query_stream.shape)
    attn_out = self.attention.output(ctx, query_stream)
    return self.output(self.intermediate(attn_out), attn_out)


class RetroMAEPeer(nn.Module):

  def __init__(self, cfg):
    super().__init__()
    self.lm = BertForMaskedLM(cfg)
    self.c_head = EnhancedDecoderLayer(cfg)
    self.vocab_size = cfg.vocab_size

  def forward(self, batch):
    enc = self.lm(input_ids=batch["encoder_input_ids"],
                  attention_mask=batch["encoder_attention_mask"],
                  labels=batch["encoder_labels"], output_hidden_states=True, return_dict=True)
    h = enc.hidden_states[-1][:, :1]  # [B, 1, D], [CLS], no pooler

    emb = self.lm.bert.embeddings
    dec_ids = batch["decoder_input_ids"]
    L = dec_ids.shape[1]
    kv = torch.cat([h, emb(input_ids=dec_ids)[:, 1:]], dim=1)
    query = emb(inputs_embeds=h.expand(-1, L, -1))
    m = batch["decoder_attention_mask"]  # [B, L, L], 1 = may attend
    bias = ((1.0 - m[:, None].to(query.dtype)) * torch.finfo(query.dtype).min)
    hidden = self.c_head(query, kv, bias)
    logits = self.lm.cls(hidden)
    dec_loss = F.cross_entropy(logits.view(-1, self.vocab_size),
                               batch["decoder_labels"].view(-1), ignore_index=-100)
    return enc.loss + dec_loss, enc.loss, dec_loss


def build_optimizer(model, lr, wd, eps, total_steps, warmup_frac=0.1):
  decay, no_decay = [], []
  for name, p in model.named_parameters():  # named_parameters dedupes the tied embedding
    (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(p)
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=lr, betas=(0.9, 0.999), eps=eps)
  warm = max(1, int(total_steps * warmup_frac))

  def factor(step):
    if step < warm:
      return (step + 1) / warm
    return max(0.0, (total_steps - step) / max(1, total_steps - warm))

  return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


# --------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------

def cpu_model():
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--mode", choices=["step", "collator", "both"], default="both")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--seq_len", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20, help="timed training steps")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
  parser.add_argument("--collator_batches", type=int, default=20, help="at least 20")
  parser.add_argument("--preset", choices=sorted(SHAPES), default="minilm")
  parser.add_argument("--num_layers", type=int, default=None)
  parser.add_argument("--hidden_size", type=int, default=None)
  parser.add_argument("--num_heads", type=int, default=None)
  parser.add_argument("--intermediate_size", type=int, default=None)
  parser.add_argument("--vocab_size", type=int, default=None,
                      help="default: the tokenizer's (30522 for the shipped vocabulary)")
  parser.add_argument("--max_position", type=int, default=512)
  parser.add_argument("--attn_implementation", default="sdpa", choices=["sdpa", "eager"],
                      help="encoder attention (the decoder layer is always eager)")
  parser.add_argument("--encoder_mask_ratio", type=float, default=0.30)
  parser.add_argument("--decoder_mask_ratio", type=float, default=0.50)
  parser.add_argument("--lr", type=float, default=1e-4)
  parser.add_argument("--weight_decay", type=float, default=0.01)
  parser.add_argument("--eps", type=float, default=1e-8)
  parser.add_argument("--max_grad_norm", type=float, default=1.0)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
  parser.add_argument(
      "--text", default="documents",
      help="documents: one stdlib docstring per example (FlagEmbedding: one text per example, "
           "truncated, each batch padded to its longest); jsonl:PATH: the same from lines "
           "{\"text\": ...}; full_rows: docstrings glued back to back and cut into "
           "seq_len - 2 blocks, every slot real (a device for timing equal slots only: "
           "FlagEmbedding never glues texts)")
  args = parser.parse_args()
  if args.seq_len < 3 or args.seq_len > args.max_position:
    parser.error("--seq_len must be in [3, --max_position]")
  args.collator_batches = max(20, args.collator_batches)

  torch.set_num_threads(args.threads)
  random.seed(args.seed)
  np.random.seed(args.seed)
  torch.manual_seed(args.seed)

  tok = tokenizers.Tokenizer.from_file(args.tokenizer)
  tok.no_padding()
  tok.no_truncation()
  collator = RetroMAECollator(tok, args.seq_len, args.encoder_mask_ratio, args.decoder_mask_ratio)
  B = args.batch_size
  do_step = args.mode in ("step", "both")
  do_coll = args.mode in ("collator", "both")
  n_step_batches = (args.warmup + args.steps) if do_step else 0
  n_coll_batches = args.collator_batches if do_coll else 0
  t0 = time.perf_counter()
  needed = B * max(n_step_batches, n_coll_batches, 1)
  if args.text == "full_rows":
    chunks = packed_chunks(tok, args.seq_len - 2, needed)
  elif args.text == "documents" or args.text.startswith("jsonl:"):
    texts = (stdlib_docstrings() if args.text == "documents"
             else jsonl_texts(args.text.split(":", 1)[1]))
    chunks = document_examples(tok, texts, args.seq_len - 2, needed, args.seed)
  else:
    parser.error(f"--text: expected documents, jsonl:PATH or full_rows, got {args.text!r}")
  data_s = time.perf_counter() - t0
  print(f"[torch_peer] {len(chunks)} examples ({args.text}) in {data_s:.1f}s", file=sys.stderr)

  result = {
      "peer": "torch", "mode": args.mode, "batch_size": B, "seq_len": args.seq_len,
      "text": args.text,
      "torch": torch.__version__, "transformers": transformers.__version__,
      "threads": torch.get_num_threads(), "nproc": os.cpu_count(), "cpu": cpu_model(),
      "python": platform.python_version(),
      # Other processes on this 2-core box skew every figure: keep the load next to the numbers.
      "loadavg_1m_start": round(os.getloadavg()[0], 2),
  }

  if do_coll:
    t0, cpu0 = time.perf_counter(), time.process_time()
    for b in range(n_coll_batches):
      collator(chunks[b * B:(b + 1) * B])
    dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    result.update({"collator_batches": n_coll_batches,
                   "collator_examples_per_s": round(n_coll_batches * B / dt, 2),
                   # per CPU second of this process (all its threads): steadier under load
                   "collator_examples_per_cpu_s": round(n_coll_batches * B / cpu, 2),
                   "collator_batch_s": round(dt / n_coll_batches, 4)})
    print(f"[torch_peer] collator: {n_coll_batches * B / dt:.1f} examples/s", file=sys.stderr)

  if do_step:
    n_layers, d, heads, ffn = SHAPES[args.preset]
    cfg = BertConfig(
        vocab_size=args.vocab_size or tok.get_vocab_size(),
        hidden_size=args.hidden_size or d,
        num_hidden_layers=args.num_layers or n_layers,
        num_attention_heads=args.num_heads or heads,
        intermediate_size=args.intermediate_size or ffn,
        max_position_embeddings=args.max_position,
        type_vocab_size=2, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        initializer_range=0.02, layer_norm_eps=1e-12, tie_word_embeddings=True)
    cfg._attn_implementation = args.attn_implementation
    model = RetroMAEPeer(cfg)
    assert model.lm.cls.predictions.decoder.weight is \
        model.lm.bert.embeddings.word_embeddings.weight, "MLM head not tied"
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    opt, sched = build_optimizer(model, args.lr, args.weight_decay, args.eps, n_step_batches)

    # Collation excluded from the step timing: all batches are built up front.
    batches = [collator(chunks[b * B:(b + 1) * B]) for b in range(n_step_batches)]
    times, losses, tokens, slots, cpu_s = [], [], 0, 0, 0.0
    for step, batch in enumerate(batches):
      c0 = time.process_time()
      t0 = time.perf_counter()
      loss, enc_loss, dec_loss = model(batch)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
      opt.step()
      sched.step()
      opt.zero_grad(set_to_none=True)
      dt = time.perf_counter() - t0
      dc = time.process_time() - c0
      losses.append((enc_loss.item(), dec_loss.item()))
      if not math.isfinite(loss.item()):
        raise FloatingPointError(f"non-finite loss at step {step}")
      if step >= args.warmup:
        times.append(dt)
        cpu_s += dc
        tokens += int(batch["encoder_attention_mask"].sum())
        slots += batch["encoder_attention_mask"].numel()
      print(f"[torch_peer] step {step}{' (warmup)' if step < args.warmup else ''}: {dt:.3f}s "
            f"enc {losses[-1][0]:.3f} dec {losses[-1][1]:.3f}", file=sys.stderr)
    total = sum(times)
    result.update({
        "preset": args.preset, "num_layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size,
        "num_heads": cfg.num_attention_heads, "intermediate_size": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size, "attn_implementation": args.attn_implementation,
        "params": n_params, "warmup_steps": args.warmup, "timed_steps": len(times),
        "train_tokens_per_s": round(tokens / total, 1) if total else None,
        "real_slot_fraction": round(tokens / slots, 3) if slots else None,
        "step_s": round(total / len(times), 4) if times else None,
        "step_s_median": round(statistics.median(times), 4) if times else None,
        "step_s_min": round(min(times), 4) if times else None,
        # CPU seconds this process got per wall second while timed (~threads when uncontended)
        "step_cpu_per_wall": round(cpu_s / total, 2) if total else None,
        "enc_loss_first": round(losses[0][0], 4), "dec_loss_first": round(losses[0][1], 4),
        "enc_loss_last": round(losses[-1][0], 4), "dec_loss_last": round(losses[-1][1], 4),
    })

  result["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
