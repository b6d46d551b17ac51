"""RetroMAE pretraining config: BERT-base defaults, the reference recipe.

Variants: `--config=configs/base.py:PRESET` with PRESET one of
  smoke  - tiny BERT on the embedded text; the README's one-command demo (< 3 min on 2 cores)
  minilm - 6 layers, hidden 384, 12 heads, FFN 1536 (the shape of all-MiniLM-L6-v2)
  base   - BERT-base, the paper's Wikipedia+BookCorpus run (the default)
  large  - BERT-large
Every key can be overridden on the command line, e.g. `--config.data.max_seq_length=150`.
"""

import ml_collections

# name -> (num_layers, hidden_size, num_heads, intermediate_size)
MODEL_SHAPES = {
    "smoke": (2, 128, 2, 512),
    "minilm": (6, 384, 12, 1536),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}


def get_config(preset: str = "base") -> ml_collections.ConfigDict:
  preset = preset or "base"
  if preset not in MODEL_SHAPES:
    raise ValueError(
        f"configs/base.py: unknown preset {preset!r}; expected one of {sorted(MODEL_SHAPES)}")
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.task = "pretrain"  # retromae_jax/main.py dispatches on this key (configs/finetune.py: finetune)
  c.seed = 0
  # Dropout's random bits: 'threefry' (JAX's default: the same bits on every mesh) or 'rbg'
  # (XLA's RngBitGenerator: cheaper bits, but they depend on the mesh, and other numbers than
  # threefry's; bench/RESULTS.md has the step-time difference).
  c.dropout_prng = "threefry"
  # A HF tokenizer directory / tokenizer.json, or 'default': the bert-base-uncased WordPiece
  # vocabulary shipped in retromae_jax/data/assets (Apache-2.0).
  c.tokenizer = "default"

  # ---- Schedule (paper, Wiki+Book run: 256 x 512 tokens, lr 1e-4, 10% warmup) ----
  c.batch_size = 256  # global, over all hosts and devices
  # Microbatches per step (gradients accumulated inside the jitted step: same global batch,
  # 1/k of the activation memory).
  c.grad_accum_steps = 1
  # If the compiled step needs more memory than a device has, use more microbatches instead of
  # running out of memory (logged; the loss is the same).
  c.auto_microbatch = True
  c.total_steps = 100_000
  c.log_every = 50
  c.checkpoint_every = 1000
  c.checkpoint_keep = 3  # the last N checkpoints...
  c.checkpoint_keep_period = 0  # ...plus, forever, every step that is a multiple of this (0: none)
  # A step whose loss or gradient norm is not finite stops the run there (nothing non-finite is
  # ever saved; docs/reliability.md). skip_steps > 0: skip up to that many such steps instead
  # (their update is not applied), then stop.
  c.divergence = ml_collections.ConfigDict()
  c.divergence.skip_steps = 0

  # ---- Data (host-side tf.data; see retromae_jax/data) ----
  c.data = ml_collections.ConfigDict()
  # jsonl:GLOB | text:GLOB | tfds:NAME[:SPLIT] | pydoc (the Python standard library's
  # docstrings, real English text found on every machine: the embedded default) |
  # prepared:DIR[@W],prepared:DIR2[@W2] (corpora from python -m retromae_jax.tools.prepare,
  # read by index; weights W mix several: docs/prepared_data.md).
  c.data.source = "pydoc"
  c.data.data_dir = ""  # TFDS data_dir (gs:// works)
  c.data.max_seq_length = 512
  c.data.encoder_mask_ratio = 0.30
  c.data.decoder_mask_ratio = 0.50
  c.data.decoder_pool_size = 128  # FlagEmbedding: min(n, 128) pool masks per example
  # Chunks per data shard (see num_shards); prepared sources shuffle by index instead, and only
  # <= 1 (no shuffling) matters to them.
  c.data.shuffle_buffer = 10_000
  c.data.min_chunk_tokens = 8  # chunks shorter than this (in tokens) are dropped and counted
  c.data.prefetch = 2
  # Several chunks per row, each its own [CLS] ... [SEP] segment that attends only to itself:
  # static shapes without padding waste, each chunk's losses those of the chunk alone
  # (retromae_jax/data/pretrain/packing.py). False: one chunk per row, padded.
  c.data.pack = True
  # Logical shards of the corpus (each a fixed slice with its own seeds and its own rows of every
  # batch). 0 = one per process. Fix it (a multiple of every process count you will use) to make
  # the batches, and so the run, independent of the number of hosts.
  c.data.num_shards = 0

  # ---- Model ----
  layers, hidden, heads, ffn = MODEL_SHAPES[preset]
  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = -1  # -1: the tokenizer's vocabulary size, rounded up to vocab_multiple
  # 1 = the tokenizer's size exactly (as the references). Tensor parallelism needs the vocabulary
  # divisible by the mesh's tensor axis: 128 suits any power-of-two axis and TPU/GPU tiles.
  c.model.vocab_multiple = 1
  c.model.num_layers = layers
  c.model.hidden_size = hidden
  c.model.num_heads = heads
  c.model.intermediate_size = ffn
  c.model.max_position_embeddings = 512
  c.model.type_vocab_size = 2
  c.model.dropout_rate = 0.1
  c.model.attention_dropout_rate = 0.1
  c.model.initializer_range = 0.02
  c.model.layer_norm_eps = 1e-12
  # 'auto': bfloat16 compute on TPU/GPU, float32 on CPU (bf16 matmuls are slower on CPUs).
  c.model.dtype = "auto"
  c.model.param_dtype = "float32"
  # Decoder query stream: 'embeddings' = LayerNorm(h + pos_i + type_0) (FlagEmbedding, DupMAE;
  # works for RoBERTa-style backbones) or 'raw' = h + pos_i (the RetroMAE repository).
  c.model.query_stream = "embeddings"
  # The sentence vector h the decoder reconstructs from (and that export, encode and evaluate
  # read): 'cls' = the [CLS] state (the reference), 'mean' = the mean over real tokens (the
  # pooling sentence-transformers models such as all-MiniLM-L6-v2 were trained with).
  c.model.sentence_vector = "cls"
  # Rematerialisation of encoder layers in the backward pass: 'none', 'full' (recompute
  # everything: least memory), 'dots' (keep matmul outputs without batch dimensions).
  c.model.remat = "none"
  # Encoder family when training from scratch ('bert' | 'roberta' | 'xlm-roberta'); an init.hf_dir's
  # config.json model_type overrides it. RoBERTa-style families number positions from
  # pad_token_id + 1 (so max_position_embeddings = longest input + pad_token_id + 1, 514 for 512);
  # their checkpoints have type_vocab_size 1 and layer_norm_eps 1e-5, and their tokenizer uses
  # <s> </s> <pad> <mask> (pad_token_id must be the tokenizer's pad id).
  c.model.family = "bert"
  c.model.pad_token_id = -1  # -1: the family's (0 for BERT, 1 for RoBERTa / XLM-R)
  # Attention (retromae_jax/models/attention.py): 'auto' = 'dense' up to 1024 keys, 'chunked'
  # (query blocks of attention_block; memory linear in the length) beyond; 'cudnn' = the fused
  # GPU kernel (bf16, no attention dropout).
  c.model.attention = "auto"
  c.model.attention_block = 512
  # Gradients of the vocabulary projection (models/bert.vocab_logits): 'fused' = weight and bias
  # gradients as plain dots over the flattened tokens (no transposed copy of the [tokens, vocab]
  # logit gradient; same numbers up to summation order), 'autodiff' = JAX's own derivative.
  c.model.vocab_head = "fused"
  # The loss over the vocabulary (encoder MLM head, decoder): 'chunked' = blocks of
  # vocab_loss_block positions per row, each block's logits, loss and gradients computed in one
  # pass (models/vocab_loss.py), so that the [tokens, vocab] logits never exist at once: the same
  # loss and gradients, less memory (bench/RESULTS.md); 'plain' = all logits, then the
  # cross-entropy. 'auto' = chunked on accelerators (memory decides what fits), plain on CPUs
  # (time decides: the chunked step was slower on the 2-core CPU, bench/RESULTS.md). The
  # bag-of-words term (objective.bow_weight) needs every position's logits: its head stays plain.
  c.model.vocab_loss = "auto"
  c.model.vocab_loss_block = 128
  # Longer inputs than an init.hf_dir checkpoint's positions cover (e.g. 8192): its position table
  # grows to this many positions, the new rows from the learned ones by 'tile' (copy them again
  # and again, Longformer's recipe) or 'interpolate' (stretch them linearly). 0 = keep its length.
  c.model.extend_positions_to = 0
  c.model.position_extension = "tile"

  # ---- Objective (the defaults are RetroMAE's). Each value below names a part of the objective,
  # one file each in retromae_jax/objectives/ (registry.py lists them) ----
  c.objective = ml_collections.ConfigDict()
  c.objective.kind = "retromae"  # 'retromae' (encoder + decoder) | 'mlm' (no decoder at all)
  # DupMAE's bag-of-words loss (0.1 in DupMAE): L = L_enc + L_dec + w * L_bow.
  # 0 = off. On, the MLM head runs at every encoder position ([B, L, V] logits).
  c.objective.bow_weight = 0.0
  c.decoder = ml_collections.ConfigDict()
  # 'enhanced' (RetroMAE's) | 'basic' (reconstructs a [MASK]-ed copy from it and h) |
  # 'cross_attention' (the same input, cross-attending to the encoder) | 'autoregressive'
  # (causal, conditioned on h, as SEED-Encoder).
  c.decoder.kind = "enhanced"
  c.decoder.num_layers = 1  # 1..12; enhanced: later layers' queries are the previous output
  c.decoder.cross_attend_to = "sentence"  # cross_attention: 'sentence' (h) | 'tokens' (all)
  c.decoder.attention_span = 0  # autoregressive: tokens seen besides h (SEED-Encoder); 0 = all
  c.encoder = ml_collections.ConfigDict()
  # 'corrupt' (80/10/10 in place, RetroMAE's) | 'drop' (MAE-style: the encoder reads only the unmasked
  # tokens at their original positions; no encoder loss, the decoder alone reconstructs).
  c.encoder.masking = "corrupt"

  # ---- Optimizer (AdamW, warmup then linear decay, clip 1.0) ----
  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-4
  c.optim.warmup_ratio = 0.1
  c.optim.weight_decay = 0.01
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.grad_clip_norm = 1.0
  # Warm-up of the new parts (docs/domain_adaptation.md): for this many steps only the parts the
  # initial checkpoint did not provide (a missing MLM head, the decoder) train; the provided ones
  # are frozen (no update, no optimizer-state change). 0 = off.
  c.optim.freeze_encoder_steps = 0
  # Peak learning rate of the provided parts (after their freeze, with their own warmup over the
  # remaining steps); 0 = optim.learning_rate.
  c.optim.encoder_learning_rate = 0.0

  # ---- Initialisation ----
  c.init = ml_collections.ConfigDict()
  c.init.hf_dir = ""  # HF BERT directory (config.json + model.safetensors); '' = from scratch
  # A workdir / checkpoints dir / step dir of ours: encoder, MLM head and decoder (fresh optimizer).
  c.init.checkpoint = ""
  # A decoder/ written by `python -m retromae_jax.tools.export` (with init.hf_dir = its encoder/).
  c.init.decoder_dir = ""

  # ---- Anti-forgetting (retromae_jax/trainers/anchor.py): keep the encoder's sentence vectors
  # ('vectors') or in-batch similarities ('similarities') near the starting model's, on the
  # step's own texts; the starting model = the initial encoder, frozen, or anchor.model's (an
  # HF BERT directory or a workdir). weight 0 = off.
  c.anchor = ml_collections.ConfigDict(dict(weight=0.0, kind="vectors", temperature=0.05,
                                            model=""))

  # ---- Zero-shot retrieval while pretraining (retromae_jax/evaluators/periodic.py) ----
  c.eval = ml_collections.ConfigDict()
  c.eval.data = ""  # a BEIR folder (DIR or beir:DIR), or 'pydoc'; '' = no evaluation
  c.eval.split = "test"
  c.eval.every_steps = 0  # 0 = only at the end (when eval.data is set)
  c.eval.at_start = True  # also before the first step: the initial encoder's score
  c.eval.pooling = "cls"  # the sentence vector RetroMAE trains; 'mean' for mean-pooled models
  c.eval.normalize = True  # cosine similarity, as fine-tuning and BGE use
  c.eval.query_max_len = 64
  c.eval.passage_max_len = 256  # both capped at model.max_position_embeddings
  c.eval.batch_size = 64
  c.eval.top_k = 100
  # Qrels naming queries or documents missing from the folder: an error, unless allowed (then
  # counted and logged; those documents count as misses).
  c.eval.allow_missing_ids = False

  # ---- Resume (retromae_jax/trainers/run_identity.py, docs/reliability.md) ----
  # A workdir holding checkpoints resumes only the same run: batch size, data, objective, model
  # shape, seed and tokenizer must match its checkpoint's. Keys named here may change on purpose.
  c.resume = ml_collections.ConfigDict()
  c.resume.allow_changes = ""  # comma-separated keys or sections, e.g. "data.source,batch_size"

  # ---- Mesh (axes data x fsdp x tensor; -1 = the remaining devices) ----
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.sharding_rules = "fsdp_tensor"  # a table in retromae_jax/trainers/sharding.py

  # ---- Hardware accounting (MFU) ----
  # Peak FLOP/s of one device. 0 = look it up from the device kind (TPU/GPU table in
  # retromae_jax/trainers/flops.py); CPUs have no table entry, so this is measured: about 200 GFLOP/s f32
  # on the 2-core CI machine.
  c.peak_flops_per_device = 0.0
  c.cpu_peak_flops = 200e9

  if preset == "smoke":
    c.batch_size = 16
    c.total_steps = 120
    c.log_every = 10
    c.checkpoint_every = 60
    c.data.max_seq_length = 64
    c.data.shuffle_buffer = 1000
    c.model.max_position_embeddings = 128
    c.optim.learning_rate = 5e-4
  elif preset == "minilm":
    c.batch_size = 16
    c.data.max_seq_length = 128
    c.total_steps = 10_000
  return c
