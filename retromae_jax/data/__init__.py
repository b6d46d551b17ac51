"""Host-side input pipeline: sources, tokenisation and chunking, masking, tf.data batching."""
