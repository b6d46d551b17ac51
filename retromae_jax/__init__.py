"""retromae_jax: RetroMAE pretraining and contrastive fine-tuning of text encoders in JAX/Flax."""
