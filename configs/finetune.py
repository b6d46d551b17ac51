"""Contrastive fine-tuning config (stage 2, the BGE / FlagEmbedding recipe).

 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----python -m retromae_jax.main --config=configs/finetune.py:PRESET --workdir=DIR \
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----    --config.init.model=PRETRAIN_WORKDIR_OR_HF_DIR

Variants (PRESET):
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----smoke  - the smoke-shaped model (2 layers, hidden 128) on the offline pydoc retrieval set's
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----         train split, evaluated on its test split; from scratch unless init.model is given
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----         (< 2 min on 2 cores)
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----minilm - the all-MiniLM-L6-v2 shape on the pydoc set; meant with init.model (e.g. a minilm
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----         pretraining workdir, or the all-MiniLM-L6-v2 HF directory)
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----base   - BERT-base with BGE's fine-tuning hyper-parameters (lr 1e-5, temperature 0.02,
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----         group 8, 64/256 tokens); set init.model and data.train (the default)
Model, optimizer and mesh sections start from configs/base.py's for the same shape; with
init.model the model's shape comes from that checkpoint's config.json.
Every key can be overridden on the command line, e.g. `--config.data.group_size=4`.
"""

import ml_collections

from configs import base

PRESETS = ("smoke", "minilm", "base")


def get_config(preset: str = "base") -> ml_collections.ConfigDict:
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----preset = preset or "base"
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----if preset not in PRESETS:
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  raise ValueError(f"configs/finetune.py: unknown preset {preset!r}; expected one of "
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----                   f"{sorted(PRESETS)}")
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----pretrain = base.get_config(preset)
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c = ml_collections.ConfigDict()
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.task = "finetune"  # retromae_jax/main.py dispatches on this key
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.preset = preset
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.seed = 0
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----# '' = the tokenizer files of init.model (or 'default', bert-base-uncased's vocabulary, when
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----# training from scratch); else a HF tokenizer directory / tokenizer.json.
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.tokenizer = ""

 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----# ---- Schedule ----
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.batch_size = 128  # global number of QUERIES per step, over all hosts and devices
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.total_steps = 10_000
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.log_every = 50
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.checkpoint_every = 1000
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.checkpoint_keep = 2
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.checkpoint_keep_period = 0  # also keep every step that is a multiple of this (0: none)

 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----# ---- Initialisation ----
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.init = ml_collections.ConfigDict()
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----# Our pretraining workdir (its export/encoder) or a HF BERT directory; '' = random init.
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.init.model = ""

 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----# ---- Data (retromae_jax/data/pairs.py) ----
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.data = ml_collections.ConfigDict()
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.data.train = "pydoc"  # jsonl:GLOB (FlagEmbedding) | beir:DIR | pydoc (the offline set)
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.data.split = "train"  # qrels split of a BEIR source
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.data.hard_negatives = ""  # BEIR sources: the jsonl `python -m retromae_jax.tools.mine` writes
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.data.group_size = 8  # passages per query: 1 positive + group_size - 1 negatives
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.data.query_max_len = 64  # tokens, [CLS]/[SEP] included
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.data.passage_max_len = 256
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----# Prepended to every query / passage, in training and in evaluation. BGE's English models use
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----# "Represent this sentence for searching relevant passages: " for short queries.
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.data.query_instruction = ""
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.data.passage_instruction = ""
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.data.prefetch = 2

 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----# ---- Model: the encoder's shape and dtype (configs/base.py), pooling and similarity ----
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.model = pretrain.model
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.model.pooling = "cls"  # cls (RetroMAE, BGE) | mean (sentence-transformers)
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----# cosine: L2-normalised embeddings (BGE); dot: raw inner product (the RetroMAE repository).
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.model.similarity = "cosine"
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----# 0 = the similarity's default: 0.02 for cosine (FlagEmbedding), 1.0 for dot (RetroMAE).
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.model.temperature = 0.0

 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----# ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.gradient_cache = ml_collections.ConfigDict()
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----# Rows (queries or passages) encoded at a time; 0 = the whole batch at once (plain step).
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----# Same gradients, one chunk's activations in memory, one extra forward pass.
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.gradient_cache.chunk_size = 0
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----# If the plain step would not fit a device's memory, pick a chunk size that does (logged).
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.gradient_cache.auto = True

 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----# ---- Optimizer: AdamW, warmup then linear decay (retromae_jax/trainers/optim.py) ----
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.optim = pretrain.optim
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.optim.learning_rate = 1e-5
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.optim.warmup_ratio = 0.1
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.optim.weight_decay = 0.01

 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----# ---- Periodic evaluation (retromae_jax/evaluators/retrieval.py) ----
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.eval = ml_collections.ConfigDict()
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.eval.data = ""  # a BEIR folder (DIR or beir:DIR), or 'pydoc'; '' = no evaluation
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.eval.split = "test"
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.eval.every_steps = 0  # 0 = only at the end (when eval.data is set)
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.eval.at_start = True  # also before the first step: the starting point's (zero-shot) score
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.eval.metric = "ndcg@10"  # the best step by this measure is exported to export/best
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.eval.batch_size = 64
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.eval.top_k = 100

 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----# ---- Mesh ----
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.mesh = pretrain.mesh
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----c.sharding_rules = pretrain.sharding_rules

 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----if preset == "smoke":
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.batch_size = 16
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.total_steps = 60
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.log_every = 10
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.checkpoint_every = 30
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.data.group_size = 2
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.data.query_max_len = 32
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.data.passage_max_len = 64
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.model.max_position_embeddings = 128
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  # A tiny model (random, or briefly pretrained) gives nearly the same [CLS] vector to every
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  # text (cosine ~0.99999): dropout's noise then outweighs the signal at temperature 0.02 and
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  # the run collapses to loss log(batch). Off here; real checkpoints keep BERT's 0.1.
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.model.dropout_rate = 0.0
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.model.attention_dropout_rate = 0.0
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.optim.learning_rate = 5e-4
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.eval.data = "pydoc"
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.eval.every_steps = 30
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----elif preset == "minilm":
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.batch_size = 32
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.total_steps = 500
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.log_every = 10
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.checkpoint_every = 100
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.data.group_size = 1  # the pydoc set has no negatives: in-batch only (mine some for more)
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.data.query_max_len = 32
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.data.passage_max_len = 128
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.optim.learning_rate = 2e-5
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.eval.data = "pydoc"
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----  c.eval.every_steps = 100
 ---- Memory: the gradient cache (retromae_jax/models/biencoder.py) ----return c
