"""Contrastive fine-tuning config (stage 2, the BGE / FlagEmbedding recipe).

  python -m retromae_jax.main --config=configs/finetune.py:PRESET --workdir=DIR \
      --config.init.model=PRETRAIN_WORKDIR_OR_HF_DIR

Variants (PRESET):
  smoke  - the smoke-shaped model (2 layers, hidden 128) on the offline pydoc retrieval set's
           train split, evaluated on its test split; from scratch unless init.model is given
           (< 2 min on 2 cores)
  minilm - the all-MiniLM-L6-v2 shape on the pydoc set; meant with init.model (e.g. a minilm
           pretraining workdir, or the all-MiniLM-L6-v2 HF directory)
  base   - BERT-base with BGE's fine-tuning hyper-parameters (lr 1e-5, temperature 0.02,
           group 8, 64/256 tokens); set init.model and data.train (the default)
Model, optimizer and mesh sections start from configs/base.py's for the same shape; with
init.model the model's shape comes from that checkpoint's config.json.
Every key can be overridden on the command line, e.g. `--config.data.group_size=4`.
"""

import ml_collections

from configs import base

PRESETS = ("smoke", "minilm", "base")


def get_config(preset: str = "base") -> ml_collections.ConfigDict:
  preset = preset or "base"
  if preset not in PRESETS:
    raise ValueError(f"configs/finetune.py: unknown preset {preset!r}; expected one of "
                     f"{sorted(PRESETS)}")
  pretrain = base.get_config(preset)
  c = ml_collections.ConfigDict()
  c.task = "finetune"  # retromae_jax/main.py dispatches on this key
  c.preset = preset
  c.seed = 0
  c.dropout_prng = "threefry"  # or 'rbg': cheaper bits that depend on the mesh (configs/base.py)
  # '' = the tokenizer files of init.model (or 'default', bert-base-uncased's vocabulary, when
  # training from scratch); else a HF tokenizer directory / tokenizer.json.
  c.tokenizer = ""

  # ---- Schedule ----
  c.batch_size = 128  # global number of QUERIES per step, over all hosts and devices
  c.total_steps = 10_000
  c.log_every = 50
  c.checkpoint_every = 1000
  c.checkpoint_keep = 2
  c.checkpoint_keep_period = 0  # also keep every step that is a multiple of this (0: none)
  c.divergence = pretrain.divergence  # non-finite steps: stop, or skip a few (configs/base.py)
  # Peak FLOP/s of one device, for the logged MFU (configs/base.py).
  c.peak_flops_per_device = pretrain.peak_flops_per_device
  c.cpu_peak_flops = pretrain.cpu_peak_flops

  # ---- Initialisation ----
  c.init = ml_collections.ConfigDict()
  # Our pretraining workdir (its export/encoder) or a HF BERT directory; '' = random init.
  c.init.model = ""

  # ---- Anti-forgetting (retromae_jax/trainers/anchor.py): keep the encoder's sentence vectors
  # ('vectors') or in-batch similarities ('similarities') near the starting model's, on the
  # step's own texts; the starting model = the initial encoder, frozen, or anchor.model's (an
  # HF BERT directory or a workdir). weight 0 = off.
  c.anchor = ml_collections.ConfigDict(dict(weight=0.0, kind="vectors", temperature=0.05,
                                            model=""))

  # ---- Data (retromae_jax/data/pairs.py) ----
  c.data = ml_collections.ConfigDict()
  # jsonl:GLOB (FlagEmbedding) | beir:DIR | pydoc (the offline set) | selfsup:SOURCE (label-free);
  # several datasets, one per batch: SOURCE@WEIGHT;OPTION=VALUE,... (retromae_jax/data/mixture.py)
  c.data.train = "pydoc"
  c.data.split = "train"  # qrels split of a BEIR source
  c.data.hard_negatives = ""  # BEIR sources: the jsonl `python -m retromae_jax.tools.mine` writes
  c.data.group_size = 8  # passages per query: 1 positive + group_size - 1 negatives
  c.data.query_max_len = 64  # tokens, [CLS]/[SEP] included
  c.data.passage_max_len = 256
  # Prepended to every query / passage, in training and in evaluation. BGE's English models use
  # "Represent this sentence for searching relevant passages: " for short queries.
  c.data.query_instruction = ""
  c.data.passage_instruction = ""
  c.data.prefetch = 2
  # Start-up checks of the data (retromae_jax/data/pairs_checks.py): past these the run stops.
  c.data.max_unusable_fraction = 0.01  # lines with an empty query or no positive
  c.data.max_short_groups_fraction = 0.5  # lines with fewer than group_size - 1 negatives
  c.data.min_hard_negatives_coverage = 0.5  # split's queries found in data.hard_negatives
  # data.train=selfsup:SOURCE: label-free pairs from a pretraining source's text
  # (retromae_jax/data/selfsup_pairs.py); data_dir as configs/base.py's, for tfds: sources.
  c.data.selfsup = ml_collections.ConfigDict(dict(
      kinds="crops,ict", views=1, window_words=100, crop_min=0.1, crop_max=0.5, max_documents=0))
  c.data.data_dir = ""

  # ---- Model: the encoder's shape and dtype (configs/base.py), pooling and similarity ----
  c.model = pretrain.model
  # auto (the init model's own: its sentence-transformers pooling config, e.g. mean for
  # all-MiniLM-L6-v2 or a model pretrained with model.sentence_vector=mean; else cls) |
  # cls (RetroMAE, BGE) | mean (sentence-transformers)
  c.model.pooling = "auto"
  # cosine: L2-normalised embeddings (BGE); dot: raw inner product (the RetroMAE repository).
  c.model.similarity = "cosine"
  # 0 = the similarity's default: 0.02 for cosine (FlagEmbedding), 1.0 for dot (RetroMAE).
  c.model.temperature = 0.0

  # ---- Loss extras (retromae_jax/models/contrastive_loss.py) ----
  c.loss = ml_collections.ConfigDict()
  # Distillation from teacher scores (pos_scores / neg_scores of jsonl lines; add them with
  # python -m retromae_jax.tools.score): FlagEmbedding's 'kl_div' term, weight kd_weight
  # (0 = off), the teacher's scores divided by kd_temperature before its softmax.
  c.loss.kd_weight = 0.0
  c.loss.kd_temperature = 1.0
  # Matryoshka: comma-separated prefix sizes, e.g. "384,256,128,64" ('' = the full vector only),
  # the loss summed over them with matryoshka_weights (comma-separated; '' = 1 each).
  c.loss.matryoshka_dims = ""
  c.loss.matryoshka_weights = ""

  # ---- Memory: the gradient cache (retromae_jax/trainers/gradient_cache.py) ----
  c.gradient_cache = ml_collections.ConfigDict()
  # Rows (queries or passages) encoded at a time; 0 = the whole batch at once (plain step).
  # Same gradients, one chunk's activations in memory, one extra forward pass.
  c.gradient_cache.chunk_size = 0
  # If the plain step would not fit a device's memory, pick a chunk size that does (logged).
  c.gradient_cache.auto = True

  # ---- Optimizer: AdamW, warmup then linear decay (retromae_jax/trainers/optim.py) ----
  c.optim = pretrain.optim
  c.optim.learning_rate = 1e-5
  c.optim.warmup_ratio = 0.1
  c.optim.weight_decay = 0.01

  # ---- Periodic evaluation (retromae_jax/evaluators/retrieval.py) ----
  c.eval = ml_collections.ConfigDict()
  c.eval.data = ""  # a BEIR folder (DIR or beir:DIR), or 'pydoc'; '' = no evaluation
  c.eval.split = "test"
  c.eval.every_steps = 0  # 0 = only at the end (when eval.data is set)
  c.eval.at_start = True  # also before the first step: the starting point's (zero-shot) score
  c.eval.metric = "ndcg@10"  # the best step by this measure is exported to export/best
  # Also score the vectors truncated to these sizes (comma-separated; '' = loss.matryoshka_dims):
  # eval/dim<d>/<measure> rows.
  c.eval.dims = ""
  # Stop after this many evaluations in a row without a new best eval.metric (0 = never).
  c.eval.patience = 0
  c.eval.batch_size = 64
  c.eval.top_k = 100
  # Qrels naming queries or documents missing from the folder: an error, unless allowed (then
  # counted and logged; those documents count as misses).
  c.eval.allow_missing_ids = False

  # ---- Mesh ----
  c.resume = pretrain.resume  # keys that may change on resume on purpose (configs/base.py)
  c.mesh = pretrain.mesh
  c.sharding_rules = pretrain.sharding_rules

  if preset == "smoke":
    c.batch_size = 16
    c.total_steps = 60
    c.log_every = 10
    c.checkpoint_every = 30
    c.data.group_size = 2
    c.data.query_max_len = 32
    c.data.passage_max_len = 64
    c.model.max_position_embeddings = 128
    # A tiny model (random, or briefly pretrained) gives nearly the same [CLS] vector to every
    # text (cosine ~0.99999): dropout's noise then outweighs the signal at temperature 0.02 and
    # the run collapses to loss log(batch). Off here; real checkpoints keep BERT's 0.1.
    c.model.dropout_rate = 0.0
    c.model.attention_dropout_rate = 0.0
    c.optim.learning_rate = 5e-4
    c.eval.data = "pydoc"
    c.eval.every_steps = 30
  elif preset == "minilm":
    c.batch_size = 32
    c.total_steps = 500
    c.log_every = 10
    c.checkpoint_every = 100
    c.data.group_size = 1  # the pydoc set has no negatives: in-batch only (mine some for more)
    c.data.query_max_len = 32
    c.data.passage_max_len = 128
    c.optim.learning_rate = 2e-5
    c.eval.data = "pydoc"
    c.eval.every_steps = 100
  return c
